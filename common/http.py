"""Outgoing HTTP calls to other services, carrying the caller's `X-Request-ID`."""

from __future__ import annotations

import httpx

from common.requestid import REQUEST_ID_HEADER, current_request_id


async def _forward_request_id(request: httpx.Request) -> None:
    request_id = current_request_id.get()
    if request_id is not None and REQUEST_ID_HEADER not in request.headers:
        request.headers[REQUEST_ID_HEADER] = request_id


def service_client(base_url: str = "", *, timeout: float = 5.0) -> httpx.AsyncClient:
    """A client for calls to other services; every call forwards the current request id."""
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=httpx.Timeout(timeout),
        event_hooks={"request": [_forward_request_id]},
        follow_redirects=False,
    )
