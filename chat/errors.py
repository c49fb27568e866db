"""Errors a person can act on, each with the contract's code and status.

Services and selectors raise these; the API turns them into
``{"error": {"code", "message"}}`` with ``status``.
"""


class ChatError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, retry_after: int | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.retry_after = retry_after


class InvalidInput(ChatError):
    status = 400
    code = "invalid"


class NotAuthenticated(ChatError):
    status = 401
    code = "not_authenticated"


class Forbidden(ChatError):
    status = 403
    code = "forbidden"


class NotFound(ChatError):
    status = 404
    code = "not_found"


class MethodNotAllowed(ChatError):
    status = 405
    code = "method_not_allowed"


class Conflict(ChatError):
    status = 409
    code = "generation_in_progress"


class Unprocessable(ChatError):
    status = 422
    code = "unprocessable"


class TooLarge(ChatError):
    status = 413
    code = "content_too_large"


class RateLimited(ChatError):
    status = 429
    code = "rate_limited"


class ServerError(ChatError):
    """An unexpected failure (the 500 handler): nothing the person can fix but trying again."""

    status = 500
    code = "server_error"


class ServiceUnavailable(ChatError):
    status = 503
    code = "service_unavailable"
