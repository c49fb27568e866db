"""Which providers are configured and which models each serves: the catalog every model id is looked up in.

Built from plain settings values (``from_settings``), so this module needs no
Django. Two shapes, one result:

- one provider (``LLM_API``, ``LLM_BASE_URL``, ``LLM_API_KEY``, ``LLM_MODELS``):
  model ids are the provider's own names (``gpt-4o``), as before several
  providers existed, so stored conversations keep working; no
  ``LLM_BASE_URL`` is the offline ``demo`` model;
- several (``LLM_PROVIDERS=openai,ollama`` and ``LLM_<NAME>_...``): a model's
  id is ``<provider>/<model>`` (``ollama/llama3.2``), unique across providers.

A model entry may carry a display name after ``|``: ``gpt-4o|GPT-4o``.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

# A provider's name: it prefixes model ids and names its LLM_<NAME>_* variables.
PROVIDER_NAME = re.compile(r"[a-z][a-z0-9_-]{0,30}")
# What separates a model's id from its display name in LLM_MODELS (model ids may hold "=", ":" and ";").
NAME_SEPARATOR = "|"


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One model a person can pick: ``id`` as the API and the database know it, ``upstream`` as the provider does."""

    id: str
    upstream: str
    name: str
    provider: str


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """One provider: its API kind, where it is, its key, its own timeouts, and its models in order."""

    name: str
    api: str
    base_url: str
    api_key: str
    models: tuple[ModelInfo, ...]
    connect_timeout: float
    read_timeout: float
    max_tokens: int | None = None
    ca_file: str = ""

    def __repr__(self) -> str:  # the key never shows, not even in a traceback's locals
        return f"ProviderConfig(name={self.name!r}, api={self.api!r}, models={len(self.models)})"


class Catalog:
    """The configured providers and their models; the first model is the default."""

    def __init__(self, providers: list[ProviderConfig]) -> None:
        self.providers = {p.name: p for p in providers}
        self.models: dict[str, ModelInfo] = {}
        for provider in providers:
            for model in provider.models:
                self.models.setdefault(model.id, model)

    def model(self, model_id: str) -> ModelInfo | None:
        return self.models.get(model_id)

    def provider_of(self, model_id: str) -> ProviderConfig | None:
        """The provider serving ``model_id``; None for an id the catalog does not have."""
        model = self.models.get(model_id)
        return None if model is None else self.providers[model.provider]


def parse_models(entries: list[str], *, provider: str, prefix: str) -> tuple[ModelInfo, ...]:
    """``entries`` ("model" or "model|Display name") as ModelInfo, ids prefixed with ``prefix``."""
    models = []
    for entry in entries:
        upstream, _, name = (part.strip() for part in entry.partition(NAME_SEPARATOR))
        if upstream:
            models.append(ModelInfo(id=prefix + upstream, upstream=upstream, name=name or upstream, provider=provider))
    return tuple(models)


def single_provider_name(base_url: str) -> str:
    """The single provider's name: the host of its URL (``api.openai.com``); "demo" without one."""
    if not base_url:
        return "demo"
    try:
        return urlsplit(base_url).hostname or "default"
    except ValueError:
        return "default"


def from_settings(
    *,
    providers: tuple[dict, ...],
    api: str,
    base_url: str,
    api_key: str,
    models: tuple[str, ...],
    connect_timeout: float,
    read_timeout: float,
    max_tokens: int | None,
) -> Catalog:
    """The catalog of ``providers`` (LLM_PROVIDERS' dicts) if any, else of the single-provider settings.

    Each dict has ``name``, ``api``, ``base_url``, ``api_key``, ``models`` (a
    list of entries) and optionally ``connect_timeout``, ``read_timeout``,
    ``max_tokens``, ``ca_file`` (None or absent: the single-provider value).
    Nothing is validated here: ``chat.checks`` reports what is wrong at start-up.
    """
    return _cached(providers, api, base_url, api_key, models, connect_timeout, read_timeout, max_tokens)


@functools.lru_cache(maxsize=8)
def _cached(providers, api, base_url, api_key, models, connect_timeout, read_timeout, max_tokens) -> Catalog:
    if not providers:
        name = single_provider_name(base_url)
        if not base_url:
            demo = ModelInfo(id="demo", upstream="demo", name="demo", provider=name)
            return Catalog([ProviderConfig(name, "demo", "", "", (demo,), connect_timeout, read_timeout)])
        entries = parse_models(list(models), provider=name, prefix="")
        entries = entries or (ModelInfo(id="default", upstream="default", name="default", provider=name),)
        config = ProviderConfig(name, api, base_url, api_key, entries, connect_timeout, read_timeout, max_tokens)
        return Catalog([config])
    configs = []
    for raw in providers:
        raw = dict(raw)
        name = raw["name"]
        entries = parse_models(list(raw.get("models") or ()), provider=name, prefix=f"{name}/")
        if raw.get("api") == "demo" and not entries:
            entries = (ModelInfo(id=f"{name}/demo", upstream="demo", name="demo", provider=name),)
        configs.append(
            ProviderConfig(
                name=name,
                api=raw.get("api") or "openai",
                base_url=raw.get("base_url") or "",
                api_key=raw.get("api_key") or "",
                models=entries,
                connect_timeout=_or(raw.get("connect_timeout"), connect_timeout),
                read_timeout=_or(raw.get("read_timeout"), read_timeout),
                max_tokens=_or(raw.get("max_tokens"), max_tokens),
                ca_file=raw.get("ca_file") or "",
            )
        )
    return Catalog(configs)


def _or(value, default):
    return default if value is None else value


def freeze(providers: list[dict]) -> tuple:
    """LLM_PROVIDERS as a hashable value for ``from_settings`` (dicts become sorted item tuples, lists tuples)."""
    return tuple(
        tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in p.items())) for p in providers or ()
    )


def configured() -> Catalog:
    """The catalog of the Django settings in force now (cached on their values: tests may change them)."""
    from django.conf import settings

    return from_settings(
        providers=freeze(settings.LLM_PROVIDERS),
        api=settings.LLM_API,
        base_url=settings.LLM_BASE_URL,
        api_key=settings.LLM_API_KEY,
        models=tuple(settings.LLM_MODELS),
        connect_timeout=settings.LLM_CONNECT_TIMEOUT,
        read_timeout=settings.LLM_READ_TIMEOUT,
        max_tokens=settings.LLM_MAX_TOKENS,
    )


def provider_name(model_id: str | None) -> str | None:
    """The name of the configured provider serving ``model_id``; None when no provider has it."""
    provider = configured().provider_of(model_id or "")
    return None if provider is None else provider.name
