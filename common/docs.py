"""`/<prefix>/docs`: Swagger UI 5 served from the installed `swagger-ui-py` wheel, so it works offline."""

from __future__ import annotations

from pathlib import Path

import swagger_ui
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response

from common.errors import NotFound

_STATIC = Path(swagger_ui.__file__).parent / "static"
_ASSETS = {
    "swagger-ui.css": "text/css",
    "swagger-ui-bundle.js": "text/javascript",
    "favicon-32x32.png": "image/png",
}
# The page runs only our own scripts: no inline code, nothing from another origin.
_CSP = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'"

_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>{title}</title>
  <link rel="stylesheet" href="{base}/swagger-ui.css">
  <link rel="icon" href="{base}/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui" data-url="{spec}"></div>
  <script src="{base}/swagger-ui-bundle.js"></script>
  <script src="{base}/init.js"></script>
</body>
</html>
"""

_INIT = """const root = document.getElementById("swagger-ui");
window.ui = SwaggerUIBundle({url: root.dataset.url, domNode: root, deepLinking: true});
"""


def docs_page(prefix: str, title: str) -> Response:
    """The HTML page that renders `<prefix>/openapi.json`."""
    page = _PAGE.format(title=title, base=f"{prefix}/docs/assets", spec=f"{prefix}/openapi.json")
    return HTMLResponse(page, headers={"Content-Security-Policy": _CSP})


def docs_asset(request: Request) -> Response:
    """One of the few files the page needs, with a long cache life (they change only with the wheel)."""
    name: str = request.path_params["asset"]
    headers = {"Cache-Control": "public, max-age=86400"}
    if name == "init.js":
        return Response(_INIT, media_type="text/javascript", headers=headers)
    if name not in _ASSETS:
        raise NotFound("No such documentation asset.")
    return FileResponse(_STATIC / name, media_type=_ASSETS[name], headers=headers)
