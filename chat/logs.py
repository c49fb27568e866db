"""Log records as operators need them: one JSON object a line, a request id, no secret.

``config/settings/base.py`` installs both filters on the root handler, so every
record that reaches stdout went through them, whichever logger made it.
``LOG_FORMAT`` picks ``JsonFormatter`` or ``PlainFormatter``.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
from datetime import UTC, datetime
from urllib.parse import unquote, urlsplit

# The id of the request being served; set by chat.middleware.RequestIdMiddleware.
# Tasks and threads started while serving a request inherit it.
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

# Attributes that request log lines carry (see RequestIdMiddleware), output when present.
REQUEST_FIELDS = ("method", "path", "status", "duration_ms")

REDACTED = "***"
# Secrets shorter than this are replaced only where they stand as credentials
# (URL user:password@, password=...): replacing every "chat" in every message
# would make the logs unreadable without protecting anything.
MIN_SECRET_LENGTH = 8
_URL_CREDENTIALS = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^@\s]+(?P<tail>@)")
_KEY_VALUE_PASSWORD = re.compile(r"(?P<head>\bpassword\s*[=:]\s*['\"]?)[^\s'\",]+", re.IGNORECASE)


class RequestIdFilter(logging.Filter):
    """Give every record a ``request_id`` (``-`` outside a request).

    Django logs a response's 4xx/5xx status after the middleware has
    finished; such records carry the request itself, and so its id.
    """

    def filter(self, record):
        if not getattr(record, "request_id", None):
            request = getattr(record, "request", None)
            record.request_id = getattr(request, "request_id", None) or request_id.get()
        return True


def _url_password(url: str) -> str:
    try:
        return unquote(urlsplit(url).password or "")
    except ValueError:
        return ""


def configured_secrets() -> list[str]:
    """The values no log line may show: LLM API keys, SECRET_KEY, the database, Redis, SMTP and LDAP passwords."""
    from django.conf import settings

    if not settings.configured:
        return []
    values = [
        getattr(settings, "LLM_API_KEY", ""),
        *(provider.get("api_key", "") for provider in getattr(settings, "LLM_PROVIDERS", [])),
        getattr(settings, "SECRET_KEY", ""),
        *getattr(settings, "SECRET_KEY_FALLBACKS", []),
        _url_password(getattr(settings, "REDIS_URL", "")),
        getattr(settings, "EMAIL_HOST_PASSWORD", ""),
        getattr(settings, "AUTH_LDAP_BIND_PASSWORD", ""),
    ]
    for database in getattr(settings, "DATABASES", {}).values():
        values.append(database.get("PASSWORD") or "")
    # Longest first, so a secret that contains another is replaced whole.
    return sorted({v for v in values if isinstance(v, str) and v}, key=len, reverse=True)


class RedactSecretsFilter(logging.Filter):
    """Replace configured secrets, URL passwords and ``password=`` values with ``***``.

    The record's message is formatted here (``msg % args``), scrubbed, and
    stored back with no args, so every handler and formatter after this one
    sees only the scrubbed text; tracebacks and stack info are scrubbed too.
    """

    def __init__(self, name="", secrets=None):
        super().__init__(name)
        self._secrets = secrets

    @property
    def secrets(self) -> list[str]:
        # Read lazily: logging is configured before the settings are complete.
        if self._secrets is None:
            self._secrets = configured_secrets()
        return self._secrets

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            if len(secret) >= MIN_SECRET_LENGTH and secret in text:
                text = text.replace(secret, REDACTED)
        text = _URL_CREDENTIALS.sub(rf"\g<head>{REDACTED}\g<tail>", text)
        return _KEY_VALUE_PASSWORD.sub(rf"\g<head>{REDACTED}", text)

    def filter(self, record):
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: keep what we can show safely
            message = f"{record.msg!s} {record.args!r}"
        record.msg, record.args = self.scrub(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = self.scrub(record.stack_info)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, request_id, and request fields when present."""

    def format(self, record):
        entry = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or request_id.get(),
        }
        for field in REQUEST_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                entry[field] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class PlainFormatter(logging.Formatter):
    """``time LEVEL logger [request id] message``: for a developer's terminal."""

    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")

    def format(self, record):
        if not getattr(record, "request_id", None):
            record.request_id = request_id.get()
        return super().format(record)
