"""Errors and the one JSON shape every error answer has:

    {"error": {"code": <status>, "message": "...", "field": "<the request's part>", "details": [...],
               "quota": "<the quota that refused it>"}, "request_id": "..."}

(`field`, `details` and `quota` when known). Handlers raise `ApiError`; `answer_error` turns an exception into
that answer, for Starlette's exception handlers (`EXCEPTION_HANDLERS`) and for the routes the app calls
directly alike. An unexpected exception is a 500 that names the request id and nothing of the error; the
middleware logs its traceback (`middleware.py`).
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response


class ApiError(Exception):
    """An answer other than success: HTTP `status`, a message that says what to fix, the request's `field`."""

    def __init__(
        self,
        status: int,
        message: str,
        field: str | None = None,
        headers: dict | None = None,
        details: list[str] | None = None,
        quota: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.field = status, message, field
        self.headers, self.details, self.quota = headers, details, quota

    def response(self, request_id: str) -> JSONResponse:
        return error_response(
            self.status,
            self.message,
            request_id,
            field=self.field,
            details=self.details,
            headers=self.headers,
            quota=self.quota,
        )


class BodyTooLarge(Exception):
    """The request body grew past the limit while it was read (a body without Content-Length)."""


def error_response(
    status: int,
    message: str,
    request_id: str,
    *,
    field: str | None = None,
    details: list[str] | None = None,
    headers: dict | None = None,
    quota: str | None = None,
) -> JSONResponse:
    err: dict = {"code": status, "message": message}
    if field:
        err["field"] = field
    if details:
        err["details"] = details
    if quota:
        err["quota"] = quota
    return JSONResponse({"error": err, "request_id": request_id}, status_code=status, headers=headers)


def request_id(scope) -> str:
    return scope.get("state", {}).get("request_id", "")


def internal_error(request_id: str) -> JSONResponse:
    return error_response(500, "internal server error; the server log has the details", request_id)


def answer_error(exc: Exception, scope) -> Response:
    """The answer to an exception a route raised."""
    rid = request_id(scope)
    if isinstance(exc, ApiError):
        return exc.response(rid)
    if isinstance(exc, BodyTooLarge):
        return error_response(413, str(exc), rid)
    if isinstance(exc, HTTPException):  # the router's 404 and 405, the static files' 404
        if exc.status_code in (204, 304):
            return Response(status_code=exc.status_code, headers=exc.headers)
        return error_response(exc.status_code, exc.detail, rid, headers=exc.headers)
    if isinstance(exc, OSError):  # a full disk, a read-only directory: say what failed, not "internal error"
        where = f" on {exc.filename}" if exc.filename else ""
        return error_response(
            503,
            f"storage error{where}: {exc.strerror or exc}; retry when the data directory is writable",
            rid,
            headers={"Retry-After": "5"},
        )
    return internal_error(rid)


async def _handler(request: Request, exc: Exception) -> Response:
    return answer_error(exc, request.scope)


# Starlette's; for `Exception` its server-error middleware answers, then re-raises to ours, which logs it
EXCEPTION_HANDLERS = {
    ApiError: _handler,
    BodyTooLarge: _handler,
    HTTPException: _handler,
    Exception: _handler,
}
