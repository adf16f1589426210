"""The shapes of the gateway's own answers."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import JSONResponse

from services.gateway.errors import GatewayError


def error_response(
    status: int, error: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """``{"error": code, "message": why}``: a stable code for programs, a reason for people."""
    return JSONResponse({"error": error, "message": message}, status_code=status, headers=headers)


def error_json(
    error: GatewayError, message: str = "", headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """``error``'s own answer; ``message`` replaces its text where that is not for clients."""
    return error_response(error.status, error.code, message or str(error) or error.code, headers)


def unavailable(message: str, retry_after: int) -> JSONResponse:
    return error_response(503, "unavailable", message, headers={"Retry-After": str(retry_after)})
