"""OpenAI-shaped errors: `APIError(status, message, param=..., code=...)` becomes
{"error": {"message", "type", "param", "code"}} with the same HTTP status OpenAI's API would send,
so the official client raises its matching exception (BadRequestError, AuthenticationError, ...)."""
from __future__ import annotations

from typing import Optional

_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
          405: "invalid_request_error", 408: "timeout_error", 413: "invalid_request_error",
          429: "rate_limit_error", 500: "server_error", 503: "server_error", 504: "timeout_error"}


class APIError(Exception):
    def __init__(self, status: int, message: str, *, param: Optional[str] = None, code: Optional[str] = None,
                 headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": _TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}


def bad_param(param: str, message: str, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def unknown_model(name, served) -> APIError:
    return APIError(404, f"The model {name!r} does not exist on this server; it serves: "
                         f"{', '.join(served) or 'none'}", param="model", code="model_not_found")
