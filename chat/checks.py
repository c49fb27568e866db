"""Start-up checks of the configuration: Django system checks (registered in ``ChatConfig.ready``).

They run with ``manage.py check`` (and ``check --deploy``), before ``migrate``,
and when ``manage.py serve`` starts, which refuses to serve past an Error. A
mistake here would otherwise show up only as a failed reply, long after the
deployment looked fine. A message never shows a secret: the API key, and the
user, password and query of LLM_BASE_URL, are never printed.
"""

from __future__ import annotations

import difflib
import re
from urllib.parse import urlsplit

from django.conf import settings
from django.core import checks

from .providers import APIS
from .staticfiles import serves_hashed_names

# A value shown in a message: short and plain, so a key pasted into the wrong variable is not echoed.
_SHOWABLE = re.compile(r"[A-Za-z0-9_.-]{1,24}")
# Up to the last "@": a password may hold "@", "/" or "?" (unencoded), and a path seldom holds "@".
_USERINFO = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)?.*@", re.DOTALL)
REDACTED = "[redacted]"


def llm_api(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """chat.E001 when LLM_API is none of the providers' APIs, suggesting the closest one."""
    value = settings.LLM_API
    if value in APIS:
        return []
    shown = f"{value!r}" if _SHOWABLE.fullmatch(value) else "a value"
    close = difflib.get_close_matches(value.strip().lower(), APIS, n=1)
    hint = f"Did you mean {close[0]!r}? " if close else ""
    return [
        checks.Error(
            f"LLM_API is {shown}, which is not an API this app speaks.",
            hint=f"{hint}LLM_API must be one of: {', '.join(APIS)}.",
            id="chat.E001",
        )
    ]


def llm_base_url(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """chat.E002 when LLM_BASE_URL is set but is no http(s) URL with a host (unset: the demo model)."""
    url = settings.LLM_BASE_URL
    if not url:
        return []
    problem = _url_problem(url)
    if problem is None:
        return []
    return [
        checks.Error(
            f"LLM_BASE_URL ({_shown_url(url)}) {problem}.",
            hint="Set it to the API's base URL, such as https://api.openai.com/v1 (unset: the offline demo model).",
            id="chat.E002",
        )
    ]


def static_manifest(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """chat.E003 when the app serves hashed static names itself but ``collectstatic`` never wrote them."""
    if not (settings.SERVE_STATIC and serves_hashed_names()):
        return []
    from django.contrib.staticfiles.storage import staticfiles_storage

    if staticfiles_storage.exists(staticfiles_storage.manifest_name):
        return []
    return [
        checks.Error(
            f"Static files have hashed names but STATIC_ROOT ({settings.STATIC_ROOT}) holds no manifest.",
            hint="Run `manage.py collectstatic --noinput` before serving.",
            id="chat.E003",
        )
    ]


def _url_problem(url: str) -> str | None:
    """What is wrong with ``url`` as a provider's base URL, in words; None if nothing."""
    if url != url.strip() or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        return "contains spaces or control characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a port that is no number or out of range)
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("http", "https"):
        if not parts.scheme or "://" not in url:
            return "has no scheme: it must start with https:// or http://"
        return f"must start with https:// or http://, not {parts.scheme[:10]}://"
    if not parts.hostname:
        return "has no host"
    return None


def _shown_url(url: str) -> str:
    """``url`` as a message may show it: no user or password, no query or fragment, no API key."""
    shown = _USERINFO.sub(rf"\1{REDACTED}@", url, count=1)
    shown = re.split(r"[?#]", shown, maxsplit=1)[0]
    key = settings.LLM_API_KEY
    if key and len(key) >= 4:
        shown = shown.replace(key, REDACTED)
    shown = "".join(c if c.isprintable() else "?" for c in shown)
    return shown if len(shown) <= 80 else shown[:79] + "…"
