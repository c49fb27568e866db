"""Production: a team deployment behind a TLS-terminating proxy.

HTTPS-only by default: secure cookies, HSTS, and a redirect of plain HTTP
(the health checks excepted). Each can be changed through the environment;
`make check-deploy` runs Django's deployment checks against this module.
"""

from django.core.exceptions import ImproperlyConfigured

from .base import *
from .base import LOGGING, STORAGES, env

SECRET_KEY = env("SECRET_KEY", default="")
if not SECRET_KEY:
    raise ImproperlyConfigured(
        "SECRET_KEY is not set. Production needs a long random key in the environment or .env; make one with: "
        "python3 -c 'import secrets; print(secrets.token_urlsafe(50))'"
    )
DEBUG = False

SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
# Container and load-balancer probes speak plain HTTP to the process itself.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31_536_000)  # one year
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=True)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=True)

# Believe X-Forwarded-Proto only when told to: any client can send it, so it
# is safe only when a proxy that sets it is the sole way in.
if env.bool("TRUST_X_FORWARDED_PROTO", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

LOG_FORMAT = env("LOG_FORMAT", default="json")
if LOG_FORMAT not in ("json", "plain"):
    raise ImproperlyConfigured(f"LOG_FORMAT must be json or plain, not {LOG_FORMAT!r}.")
LOGGING["handlers"]["console"]["formatter"] = LOG_FORMAT

# nginx serves /static/ (docker/nginx.conf); the app does not.
SERVE_STATIC = env.bool("SERVE_STATIC", default=False)
# Names with their content's hash (main.3f2a9c1e.js), imports between modules
# rewritten to match: nginx caches them for good. `collectstatic` must run
# before the app serves a page (the Dockerfile runs it; chat.E003 checks it
# when SERVE_STATIC is on).
STORAGES = {**STORAGES, "staticfiles": {"BACKEND": "chat.staticfiles.HashedStaticFilesStorage"}}
