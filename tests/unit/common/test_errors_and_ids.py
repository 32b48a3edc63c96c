"""Pure pieces of `common`: request ids, problem documents, redaction, settings."""

from __future__ import annotations

import json

import pytest
from botocore.exceptions import ClientError
from starlette.exceptions import HTTPException

from common.errors import (
    Conflict,
    RangeNotSatisfiable,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
    exception_response,
    problem_body,
)
from common.logging import REDACTED, redact
from common.requestid import accept_or_generate
from common.settings import CommonSettings, load_settings


@pytest.mark.parametrize("good", ["a", "A.b-c_9", "x" * 128])
def test_well_formed_request_ids_are_kept(good: str) -> None:
    assert accept_or_generate(good) == good


@pytest.mark.parametrize("bad", [None, "", "x" * 129, "a b", "a/b", "é", "id\n", "<script>"])
def test_other_request_ids_are_replaced(bad: str | None) -> None:
    generated = accept_or_generate(bad)
    assert generated != bad
    assert len(generated) == 32


def test_problem_body_has_the_rfc_9457_members() -> None:
    body = problem_body(404, "No such package.", "rid", extensions={"checks": {"db": "ok"}, "status": 999})
    assert body == {
        "type": "about:blank",
        "title": "Not Found",
        "status": 404,
        "detail": "No such package.",
        "request_id": "rid",
        "checks": {"db": "ok"},
    }


@pytest.mark.parametrize(
    ("error", "status", "header", "value"),
    [
        (Unauthorized(), 401, "www-authenticate", "Bearer"),
        (TooManyRequests(30), 429, "retry-after", "30"),
        (ServiceUnavailable(), 503, "retry-after", "5"),
        (RangeNotSatisfiable(100), 416, "content-range", "bytes */100"),
    ],
)
def test_errors_carry_their_headers(error: Exception, status: int, header: str, value: str) -> None:
    response = exception_response(error, "rid")
    assert response.status_code == status
    assert response.headers[header] == value
    assert response.headers["content-type"] == "application/problem+json"


def test_unknown_exceptions_reveal_nothing() -> None:
    response = exception_response(ValueError("SELECT * FROM secrets at db.internal"), "rid")
    body = json.loads(bytes(response.body))
    assert response.status_code == 500
    assert "secrets" not in response.body.decode()
    assert body["request_id"] == "rid"


def test_routing_errors_keep_their_status_and_headers() -> None:
    response = exception_response(HTTPException(405, headers={"Allow": "GET"}), None)
    assert response.status_code == 405
    assert response.headers["allow"] == "GET"
    assert exception_response(Conflict("taken"), None).status_code == 409


def test_connection_failures_are_503() -> None:
    assert exception_response(ConnectionRefusedError(), None).status_code == 503


def test_redaction_reaches_every_depth() -> None:
    event = {"headers": {"Authorization": "Bearer x", "accept": "json"}, "items": [{"password": "p"}], "ok": 1}
    assert redact(event) == {
        "headers": {"Authorization": REDACTED, "accept": "json"},
        "items": [{"password": REDACTED}],
        "ok": 1,
    }


def test_database_url_is_normalised_to_asyncpg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEPOT_DATABASE_URL", "postgres://u:p@h/db")
    settings = CommonSettings()
    assert settings.database_url.get_secret_value() == "postgresql+asyncpg://u:p@h/db"
    assert "p@h" not in repr(settings), "secrets are not printed"


def test_log_format_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert CommonSettings().effective_log_format == "console"
    monkeypatch.setenv("DEPOT_ENVIRONMENT", "production")
    assert CommonSettings().effective_log_format == "json"


def test_invalid_settings_stop_the_process_with_one_line_each(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DEPOT_DB_POOL_SIZE", "0")
    monkeypatch.setenv("DEPOT_ENVIRONMENT", "staging")
    with pytest.raises(SystemExit) as stopped:
        load_settings(CommonSettings)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "DEPOT_DB_POOL_SIZE:" in err
    assert "DEPOT_ENVIRONMENT:" in err


@pytest.mark.parametrize(
    ("code", "http_status", "expected"),
    [("SlowDown", 503, 503), ("InternalError", 500, 503), ("RequestTimeout", 400, 503), ("NoSuchKey", 404, 500)],
)
def test_s3_outages_are_503_and_s3_surprises_are_500(code: str, http_status: int, expected: int) -> None:
    error = ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": http_status}}, "GetObject")
    assert exception_response(error, "rid").status_code == expected
