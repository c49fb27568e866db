"""Static files under names that carry their content's hash, so a proxy may cache them for good.

Production (config/settings/production.py) collects them with
``HashedStaticFilesStorage``: ``collectstatic`` writes ``main.<hash>.js`` beside
``main.js`` and a manifest that ``{% static %}`` reads. A change of content is a
change of name, so nginx sends ``/static/`` with ``Cache-Control: immutable``
(docker/nginx.conf) and no browser ever runs yesterday's module against
today's page.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.contrib.staticfiles.storage import ManifestStaticFilesStorage, staticfiles_storage
from django.views import static

# What a proxy or browser may do with a file whose name carries its hash.
IMMUTABLE = "public, max-age=31536000, immutable"


class HashedStaticFilesStorage(ManifestStaticFilesStorage):
    """Django's manifest storage, also rewriting ES module imports (``import ... from "./api.js"``).

    static/chat/js/ is a graph of modules that import each other by relative
    path; without the rewrite a hashed ``main.<hash>.js`` would import the
    unhashed ``./api.js``, which no cache can hold for good. Requires
    ``collectstatic`` before the first request (a missing entry is an error).
    """

    support_js_module_import_aggregation = True


def serves_hashed_names() -> bool:
    """Whether ``{% static %}`` names hashed files, which only ``collectstatic`` writes (in STATIC_ROOT)."""
    return isinstance(staticfiles_storage, ManifestStaticFilesStorage)


class StaticFilesHandler(ASGIStaticFilesHandler):
    """``/static/`` served by the app itself (SERVE_STATIC: ``make run``, tests, a deployment without nginx).

    With plain names it is Django's handler (the files in static/, found by the
    finders). With hashed names it serves what ``collectstatic`` wrote to
    STATIC_ROOT, the hashed files with the same ``immutable`` caching as nginx.
    """

    _hashed_names: frozenset[str] | None = None

    def serve(self, request):
        if not serves_hashed_names():
            return super().serve(request)
        if self._hashed_names is None:
            # The manifest is read once per process, like {% static %} does.
            self._hashed_names = frozenset(staticfiles_storage.hashed_files.values())
        path = self.file_path(request.path)
        response = static.serve(request, path, document_root=settings.STATIC_ROOT)
        if path in self._hashed_names:
            response["Cache-Control"] = IMMUTABLE
        return response
