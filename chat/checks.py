"""Start-up checks of the configuration: Django system checks (registered in ``ChatConfig.ready``).

They run with ``manage.py check`` (and ``check --deploy``), before ``migrate``,
and when ``manage.py serve`` starts, which refuses to serve past an Error. A
mistake here would otherwise show up only as a failed reply, long after the
deployment looked fine. A message never shows a secret: the API key, and the
user, password and query of LLM_BASE_URL, are never printed.
"""

from __future__ import annotations

import difflib
import os
import re
from urllib.parse import urlsplit

from django.conf import settings
from django.core import checks

from .providers import APIS
from .providers.catalog import NAME_SEPARATOR, PROVIDER_NAME
from .staticfiles import serves_hashed_names

# A value shown in a message: short and plain, so a key pasted into the wrong variable is not echoed.
_SHOWABLE = re.compile(r"[A-Za-z0-9_.-]{1,24}")
# Up to the last "@": a password may hold "@", "/" or "?" (unencoded), and a path seldom holds "@".
_USERINFO = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)?.*@", re.DOTALL)
REDACTED = "[redacted]"


def llm_api(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """chat.E001 when LLM_API is none of the providers' APIs, suggesting the closest one."""
    return _api_errors("LLM_API", settings.LLM_API)


def llm_base_url(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """chat.E002 when LLM_BASE_URL is set but is no http(s) URL with a host (unset: the demo model)."""
    url = settings.LLM_BASE_URL
    if not url:
        return []
    return _base_url_errors("LLM_BASE_URL", url, unset="unset: the offline demo model")


def llm_providers(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """Each provider of LLM_PROVIDERS: chat.E004 for a bad or repeated name, chat.E001 / chat.E002 for its
    LLM_<NAME>_API / LLM_<NAME>_BASE_URL, chat.E005 when it has no models, chat.E006 for an unreadable CA file.

    chat.W001 when the single-provider LLM_BASE_URL is set too (it is then ignored).
    """
    errors: list[checks.CheckMessage] = []
    seen: set[str] = set()
    for provider in settings.LLM_PROVIDERS:
        name = provider["name"]
        variable = "LLM_" + "".join(c if c.isalnum() else "_" for c in name.upper()) + "_"
        if not PROVIDER_NAME.fullmatch(name) or name in seen:
            shown = f"{name!r}" if _SHOWABLE.fullmatch(name) else "a name"
            problem = "is named twice" if name in seen else "is not a valid provider name"
            errors.append(
                checks.Error(
                    f"LLM_PROVIDERS: {shown} {problem}.",
                    hint="Provider names are lowercase letters, digits, '-' and '_', starting with a letter, "
                    "each once (they prefix model ids: ollama/llama3.2).",
                    id="chat.E004",
                )
            )
        seen.add(name)
        errors += _api_errors(variable + "API", provider["api"])
        if provider["api"] != "demo":
            if not provider["base_url"]:
                errors.append(
                    checks.Error(
                        f"{variable}BASE_URL is not set.",
                        hint="Set it to the provider's base URL, such as https://api.openai.com/v1.",
                        id="chat.E002",
                    )
                )
            else:
                errors += _base_url_errors(variable + "BASE_URL", provider["base_url"], unset="required")
            if not any(entry.partition(NAME_SEPARATOR)[0].strip() for entry in provider["models"]):
                errors.append(
                    checks.Error(
                        f"{variable}MODELS names no model.",
                        hint=f"List its models, comma-separated, e.g. {variable}MODELS=gpt-4o|GPT-4o,gpt-4o-mini",
                        id="chat.E005",
                    )
                )
        ca_file = provider.get("ca_file") or ""
        if ca_file and not os.access(ca_file, os.R_OK):
            errors.append(
                checks.Error(
                    f"{variable}CA_FILE ({ca_file[:80]}) cannot be read.",
                    hint="Point it to a PEM file of the CA that signed the provider's certificate.",
                    id="chat.E006",
                )
            )
    if settings.LLM_PROVIDERS and settings.LLM_BASE_URL:
        errors.append(
            checks.Warning(
                "LLM_BASE_URL is ignored: LLM_PROVIDERS is set, and each provider has its own LLM_<NAME>_BASE_URL.",
                hint="Unset LLM_BASE_URL, LLM_API, LLM_API_KEY and LLM_MODELS, or unset LLM_PROVIDERS.",
                id="chat.W001",
            )
        )
    return errors


def _api_errors(variable: str, value: str) -> list[checks.CheckMessage]:
    if value in APIS:
        return []
    shown = f"{value!r}" if _SHOWABLE.fullmatch(value) else "a value"
    close = difflib.get_close_matches(value.strip().lower(), APIS, n=1)
    hint = f"Did you mean {close[0]!r}? " if close else ""
    return [
        checks.Error(
            f"{variable} is {shown}, which is not an API this app speaks.",
            hint=f"{hint}{variable} must be one of: {', '.join(APIS)}.",
            id="chat.E001",
        )
    ]


def _base_url_errors(variable: str, url: str, *, unset: str) -> list[checks.CheckMessage]:
    problem = _url_problem(url)
    if problem is None:
        return []
    return [
        checks.Error(
            f"{variable} ({_shown_url(url)}) {problem}.",
            hint=f"Set it to the API's base URL, such as https://api.openai.com/v1 ({unset}).",
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
    for key in (settings.LLM_API_KEY, *(p["api_key"] for p in settings.LLM_PROVIDERS)):
        if key and len(key) >= 4:
            shown = shown.replace(key, REDACTED)
    shown = "".join(c if c.isprintable() else "?" for c in shown)
    return shown if len(shown) <= 80 else shown[:79] + "…"
