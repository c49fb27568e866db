"""Settings shared by every environment.

Everything configurable is read here, once, with one ``environ.Env`` from the
process environment or a ``.env`` file at the project root. The variables are
those of the contract's "Running it" plus a few documented in ``.env.example``.
"""

from datetime import timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

SECRET_KEY = env("SECRET_KEY", default="")
DEBUG = env.bool("DEBUG", default=False)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    # daphne first: its runserver replaces Django's with an ASGI one.
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    # Login throttling: failed sign-ins counted in the database (every process agrees).
    "axes",
    "chat",
]

MIDDLEWARE = [
    # First: the request id covers every log line, the redirects and the errors below.
    "chat.middleware.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Outside session/auth: it also turns their database errors into a 503.
    "chat.middleware.DatabaseUnavailableMiddleware",
    "csp.middleware.CSPMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # After auth, whose user it replaces for `Authorization: Bearer` on /api/ (no session, no CSRF).
    "chat.middleware.ApiTokenMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as axes requires: turns a locked-out sign-in into the 429 page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "csp.context_processors.nonce",
                "chat.views.site",
            ],
        },
    },
]

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
# Never ATOMIC_REQUESTS (it breaks async views). CONN_MAX_AGE 0 for Django's
# request threads (one thread per request: a kept connection would outlive it);
# chat/db.py's ORM threads keep theirs on SQLite, and CONN_HEALTH_CHECKS makes
# a kept connection that saw an error prove itself before it is used again.
DATABASES["default"]["ATOMIC_REQUESTS"] = False
DATABASES["default"]["CONN_MAX_AGE"] = 0
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL and IMMEDIATE transactions let several threads (and two processes)
    # write one SQLite file without "database is locked" under load.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env("REDIS_URL", default="")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            # The pub/sub layer: a group send is one PUBLISH and each process
            # has one subscription, a fraction of the core layer's CPU per
            # message. Pub/sub delivers at most once (nothing is kept for a
            # subscriber that is away); the event log fills any gap (chat.fanout).
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {
                "hosts": [REDIS_URL],
                "prefix": "chat:layer",
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer", "CONFIG": {"capacity": 2000}}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"
# axes' backend, counting each sign-in, refuses a locked-out one before the
# password is checked; ModelBackend then checks it (and loads the user of
# existing sessions).
AUTHENTICATION_BACKENDS = ["chat.lockout.SignInBackend", "django.contrib.auth.backends.ModelBackend"]

# Sign-in throttling (/accounts/login/, /admin/login/). A username OR a client
# address with AXES_FAILURE_LIMIT failures within the cool-off is refused with
# 429 and Retry-After, even with the right password, until its last failure is
# older than the cool-off. `manage.py axes_reset` unlocks everyone.
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(seconds=env.int("AXES_COOLOFF_SECONDS", default=900))
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
# Refused attempts during a lockout are not counted, so Retry-After holds.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
# Counts a sign-in before its password is checked (exact under concurrency);
# a success clears the username's failures only (axes' AXES_RESET_ON_SUCCESS
# would clear the address's failures against other usernames too).
AXES_HANDLER = "chat.lockout.SignInAttempts"
AXES_RESET_ON_SUCCESS = False
AXES_LOCKOUT_CALLABLE = "chat.lockout.lockout_response"
# The address is REMOTE_ADDR as daphne sets it: the TCP peer, or nginx's
# X-Forwarded-For only when daphne runs with --proxy-headers (docker/entrypoint.sh,
# where nginx alone reaches it and overwrites the header). A client's own
# X-Forwarded-For is never read here, even if django-ipware gets installed.
AXES_IPWARE_META_PRECEDENCE_ORDER = ["REMOTE_ADDR"]

# Sign-in against an LDAP directory / Active Directory (docs/auth.md), only
# when LDAP_SERVER_URI is set. django-auth-ldap and python-ldap are the
# optional requirements/ldap.lock (`make install-ldap`), imported only then.
LDAP_SERVER_URI = env("LDAP_SERVER_URI", default="")
if LDAP_SERVER_URI:
    try:
        import ldap
        from django_auth_ldap.config import ActiveDirectoryGroupType, GroupOfNamesType, LDAPSearch, PosixGroupType
    except ImportError as exc:
        raise ImproperlyConfigured(
            "LDAP_SERVER_URI is set but django-auth-ldap is not installed: make install-ldap (requirements/ldap.lock) "
            "(python-ldap compiles: apt-get install gcc python3-dev libldap2-dev libsasl2-dev)."
        ) from exc

    def _group_dns(value: str) -> list[str]:
        # DNs contain commas, so a list of them is separated by semicolons.
        return [dn.strip() for dn in value.split(";") if dn.strip()]

    LDAP_GROUP_TYPES = {
        "groupOfNames": (GroupOfNamesType, "(objectClass=groupOfNames)"),
        "posixGroup": (PosixGroupType, "(objectClass=posixGroup)"),
        "activeDirectory": (ActiveDirectoryGroupType, "(objectClass=group)"),
    }
    LDAP_GROUP_TYPE = env("LDAP_GROUP_TYPE", default="groupOfNames")
    if LDAP_GROUP_TYPE not in LDAP_GROUP_TYPES:
        raise ImproperlyConfigured(
            f"LDAP_GROUP_TYPE must be one of {', '.join(LDAP_GROUP_TYPES)}, not {LDAP_GROUP_TYPE!r}."
        )
    LDAP_USER_SEARCH_BASE = env("LDAP_USER_SEARCH_BASE", default="")
    if not LDAP_USER_SEARCH_BASE:
        raise ImproperlyConfigured(
            "LDAP_SERVER_URI is set: LDAP_USER_SEARCH_BASE (e.g. ou=people,dc=example,dc=org) is required."
        )
    AUTH_LDAP_SERVER_URI = LDAP_SERVER_URI
    AUTH_LDAP_BIND_DN = env("LDAP_BIND_DN", default="")
    AUTH_LDAP_BIND_PASSWORD = env("LDAP_BIND_PASSWORD", default="")
    AUTH_LDAP_START_TLS = env.bool("LDAP_START_TLS", default=False)
    AUTH_LDAP_USER_SEARCH = LDAPSearch(
        LDAP_USER_SEARCH_BASE, ldap.SCOPE_SUBTREE, env("LDAP_USER_FILTER", default="(uid=%(user)s)")
    )
    AUTH_LDAP_USER_ATTR_MAP = {
        "first_name": env("LDAP_ATTR_FIRST_NAME", default="givenName"),
        "last_name": env("LDAP_ATTR_LAST_NAME", default="sn"),
        "email": env("LDAP_ATTR_EMAIL", default="mail"),
    }
    group_type, group_filter = LDAP_GROUP_TYPES[LDAP_GROUP_TYPE]
    AUTH_LDAP_GROUP_TYPE = group_type()
    LDAP_GROUP_SEARCH_BASE = env("LDAP_GROUP_SEARCH_BASE", default="")
    if LDAP_GROUP_SEARCH_BASE:
        AUTH_LDAP_GROUP_SEARCH = LDAPSearch(LDAP_GROUP_SEARCH_BASE, ldap.SCOPE_SUBTREE, group_filter)
    # Names, email and the flags below are re-read from the directory at every sign-in.
    AUTH_LDAP_ALWAYS_UPDATE_USER = True
    # Superusers are staff too (the admin site lets in staff only).
    LDAP_STAFF_GROUPS = _group_dns(env("LDAP_STAFF_GROUPS", default=""))
    LDAP_SUPERUSER_GROUPS = _group_dns(env("LDAP_SUPERUSER_GROUPS", default=""))
    AUTH_LDAP_USER_FLAGS_BY_GROUP = {
        flag: groups
        for flag, groups in (
            ("is_staff", LDAP_STAFF_GROUPS + LDAP_SUPERUSER_GROUPS),
            ("is_superuser", LDAP_SUPERUSER_GROUPS),
        )
        if groups
    }
    AUTH_LDAP_REQUIRE_GROUP = env("LDAP_REQUIRE_GROUP", default="") or None
    # A directory that does not answer fails the sign-in in seconds, not in minutes;
    # no referral chasing (Active Directory's referrals need a second bind).
    AUTH_LDAP_CONNECTION_OPTIONS = {ldap.OPT_NETWORK_TIMEOUT: 5, ldap.OPT_TIMEOUT: 10, ldap.OPT_REFERRALS: 0}
    LDAP_TLS_CA_FILE = env("LDAP_TLS_CA_FILE", default="")
    if LDAP_TLS_CA_FILE:
        # NEWCTX last: it makes libldap take the CA file set just before.
        AUTH_LDAP_CONNECTION_OPTIONS |= {ldap.OPT_X_TLS_CACERTFILE: LDAP_TLS_CA_FILE, ldap.OPT_X_TLS_NEWCTX: 0}
    # Right after the throttling backend, which counts LDAP sign-ins as any other.
    AUTHENTICATION_BACKENDS.insert(1, "chat.directory.DirectoryBackend")

# --- OpenID Connect sign-in (docs/auth.md), only when OIDC_ISSUER is set ------
# mozilla-django-oidc does the protocol; chat/oidc.py adds discovery (the
# endpoints come from OIDC_ISSUER/.well-known/openid-configuration), the ID
# token's audience and issuer checks, and the claim rules below.
OIDC_ISSUER = env("OIDC_ISSUER", default="")
OIDC_PROVIDER_NAME = env("OIDC_PROVIDER_NAME", default="your company account")
# false: only superusers may sign in with a password (the break-glass way in).
PASSWORD_LOGIN = env.bool("PASSWORD_LOGIN", default=True)
if not PASSWORD_LOGIN and not OIDC_ISSUER:
    raise ImproperlyConfigured("PASSWORD_LOGIN=false needs OIDC_ISSUER: nobody but superusers could sign in.")
if OIDC_ISSUER:
    OIDC_RP_CLIENT_ID = env("OIDC_CLIENT_ID", default="")
    OIDC_RP_CLIENT_SECRET = env("OIDC_CLIENT_SECRET", default="")
    if not OIDC_RP_CLIENT_ID or not OIDC_RP_CLIENT_SECRET:
        raise ImproperlyConfigured("OIDC_ISSUER is set: OIDC_CLIENT_ID and OIDC_CLIENT_SECRET are required.")
    OIDC_RP_SCOPES = env("OIDC_SCOPES", default="openid email profile")
    OIDC_USERNAME_CLAIM = env("OIDC_USERNAME_CLAIM", default="preferred_username")
    OIDC_ALLOWED_EMAIL_DOMAINS = [
        domain.strip().lower().lstrip("@") for domain in env.list("OIDC_ALLOWED_EMAIL_DOMAINS", default=[])
    ]
    OIDC_GROUPS_CLAIM = env("OIDC_GROUPS_CLAIM", default="groups")
    # Re-read at every sign-in; unset: is_staff / is_superuser are left as the admin set them.
    OIDC_STAFF_GROUPS = env.list("OIDC_STAFF_GROUPS", default=[])
    OIDC_SUPERUSER_GROUPS = env.list("OIDC_SUPERUSER_GROUPS", default=[])
    OIDC_CREATE_USERS = env.bool("OIDC_CREATE_USERS", default=True)
    OIDC_RP_SIGN_ALGO = "RS256"
    OIDC_USE_PKCE = True
    OIDC_PKCE_CODE_CHALLENGE_METHOD = "S256"
    OIDC_VERIFY_SSL = True
    # Seconds for each request to the provider (the library's default waits for ever).
    OIDC_TIMEOUT = 10
    # A page load this long after an OIDC sign-in asks the provider again (prompt=none).
    OIDC_RENEW_ID_TOKEN_EXPIRY_SECONDS = env.int("OIDC_SESSION_REFRESH_SECONDS", default=900)
    AUTHENTICATION_BACKENDS.append("chat.oidc.OIDCBackend")
    # After auth: it needs the session's user.
    MIDDLEWARE.insert(
        MIDDLEWARE.index("django.contrib.auth.middleware.AuthenticationMiddleware") + 1, "chat.oidc.SessionRefresh"
    )

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
# collectstatic's output: nginx serves it, and production's pages need its manifest.
STATIC_ROOT = Path(env.path("STATIC_ROOT", default=BASE_DIR / "staticfiles"))
# Plain names here: `make run` and the tests serve static/ as it is, without
# collectstatic. Production hashes them (chat/staticfiles.py).
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

# Strict Content-Security-Policy: everything from 'self', no inline script,
# no eval; images only from this host (model output cannot make the browser
# fetch an outside URL).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "font-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}

# --- The product's own settings -------------------------------------------

# Anyone may create an account at /accounts/signup/ when true.
ALLOW_SIGNUP = env.bool("ALLOW_SIGNUP", default=False)

# Outgoing email (SMTP). Without EMAIL_HOST the site sends none, and the
# password-reset pages do not exist (config/urls.py): nothing makes it try.
EMAIL_HOST = env("EMAIL_HOST", default="")
EMAIL_PORT = env.int("EMAIL_PORT", default=25)
EMAIL_HOST_USER = env("EMAIL_HOST_USER", default="")
EMAIL_HOST_PASSWORD = env("EMAIL_HOST_PASSWORD", default="")
EMAIL_USE_TLS = env.bool("EMAIL_USE_TLS", default=False)
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", default="webmaster@localhost")

# LLM endpoint (one provider). No LLM_BASE_URL: the offline "demo" model. Several: LLM_PROVIDERS below.
LLM_API = env("LLM_API", default="openai")
LLM_BASE_URL = env("LLM_BASE_URL", default="")
LLM_API_KEY = env("LLM_API_KEY", default="")
LLM_MODELS = env.list("LLM_MODELS", default=[])
LLM_CONNECT_TIMEOUT = env.float("LLM_CONNECT_TIMEOUT", default=10.0)
# Seconds without a byte from the provider before the reply fails.
LLM_READ_TIMEOUT = env.float("LLM_READ_TIMEOUT", default=60.0)
# Sent as the provider's max_tokens, the longest reply in tokens; unset or 0: not sent.
LLM_MAX_TOKENS = env.int("LLM_MAX_TOKENS", default=0) or None
if LLM_MAX_TOKENS is not None and LLM_MAX_TOKENS < 0:
    raise ImproperlyConfigured(f"LLM_MAX_TOKENS must be a positive number of tokens, not {LLM_MAX_TOKENS}.")
# A busy provider (HTTP 429 or 503 before the first token) is retried while the waits add up to at most this.
LLM_RETRY_SECONDS = env.float("LLM_RETRY_SECONDS", default=20.0)


def _llm_provider(name: str) -> dict:
    """Provider ``name`` of LLM_PROVIDERS from its LLM_<NAME>_* variables (checked by chat.checks at start-up)."""
    prefix = "LLM_" + "".join(c if c.isalnum() else "_" for c in name.upper()) + "_"
    max_tokens = env.int(prefix + "MAX_TOKENS", default=None)
    return {
        "name": name,
        "api": env(prefix + "API", default="openai"),
        "base_url": env(prefix + "BASE_URL", default=""),
        "api_key": env(prefix + "API_KEY", default=""),
        "models": env.list(prefix + "MODELS", default=[]),
        # None: LLM_CONNECT_TIMEOUT / LLM_READ_TIMEOUT / LLM_MAX_TOKENS.
        "connect_timeout": env.float(prefix + "CONNECT_TIMEOUT", default=None),
        "read_timeout": env.float(prefix + "READ_TIMEOUT", default=None),
        "max_tokens": max_tokens or None,
        # A CA certificate this provider's server certificate may also chain to (a private CA).
        "ca_file": env(prefix + "CA_FILE", default=""),
    }


# Several providers at once: their names here, each configured by LLM_<NAME>_* (docs/deploy.md).
# Empty: the single provider of LLM_API / LLM_BASE_URL / LLM_API_KEY / LLM_MODELS.
LLM_PROVIDERS = [_llm_provider(name) for name in env.list("LLM_PROVIDERS", default=[])]

# History sent upstream: the newest messages whose content fits this many
# characters (the system prompt and the new message always go).
CHAT_HISTORY_MAX_CHARS = env.int("CHAT_HISTORY_MAX_CHARS", default=48_000)
# Longest message a user may post, in characters (413 beyond).
CHAT_MAX_MESSAGE_CHARS = env.int("CHAT_MAX_MESSAGE_CHARS", default=32_000)
# Events are replayable for at least this many seconds (contract: 10 minutes).
CHAT_EVENT_RETENTION_SECONDS = env.int("CHAT_EVENT_RETENTION_SECONDS", default=900)
# A comment line goes out on every event stream at least this often.
CHAT_HEARTBEAT_SECONDS = env.float("CHAT_HEARTBEAT_SECONDS", default=15.0)
# Presence changes within this many seconds after the first go out as one
# announcement (the contract's bound for a change to reach viewers is 2 s).
CHAT_PRESENCE_COALESCE_SECONDS = min(max(env.float("CHAT_PRESENCE_COALESCE_SECONDS", default=0.3), 0.0), 1.5)
# An event stream whose client leaves more than this many bytes unread in
# this process is cut off (it resumes with Last-Event-ID); 0 = no budget.
CHAT_VIEWER_MAX_PENDING_BYTES = env.int("CHAT_VIEWER_MAX_PENDING_BYTES", default=4_194_304)  # 4 MiB
# A generation's lease; a streaming message whose lease lapsed is interrupted.
CHAT_LEASE_SECONDS = env.float("CHAT_LEASE_SECONDS", default=20.0)
# How often each process looks for interrupted generations.
CHAT_REAPER_INTERVAL_SECONDS = env.float("CHAT_REAPER_INTERVAL_SECONDS", default=10.0)
# Partial content is written to the database at most this often without Redis
# (or while Redis is unreachable): a crash loses at most this much of a reply.
CHAT_CHECKPOINT_SECONDS = env.float("CHAT_CHECKPOINT_SECONDS", default=1.0)
# With Redis the partial reply lives there too, and crash recovery reads it from
# there, so the database needs it only this often.
CHAT_CHECKPOINT_REDIS_SECONDS = env.float("CHAT_CHECKPOINT_REDIS_SECONDS", default=15.0)
# Deltas a provider sends within this window after a published one go out together
# at its end: far fewer publishes for fast providers, at most this much added delay.
CHAT_DELTA_WINDOW_SECONDS = env.float("CHAT_DELTA_WINDOW_SECONDS", default=0.04)
# A reply ends failed past this many characters (content + reasoning) or seconds
# after its post was accepted (reply_too_long / reply_timeout); 0 = no cap.
CHAT_MAX_REPLY_CHARS = env.int("CHAT_MAX_REPLY_CHARS", default=200_000)
CHAT_MAX_REPLY_SECONDS = env.float("CHAT_MAX_REPLY_SECONDS", default=600.0)

# ORM calls from async code run on the shared thread pool (see chat/db.py).
CHAT_DB_SHARED_POOL = True

# Team-wide usage limits (0 = unlimited); per-user overrides in the admin.
CHAT_DAILY_TOKEN_QUOTA = env.int("CHAT_DAILY_TOKEN_QUOTA", default=1_000_000)
CHAT_MESSAGES_PER_MINUTE = env.int("CHAT_MESSAGES_PER_MINUTE", default=20)
CHAT_MAX_STREAMS_PER_USER = env.int("CHAT_MAX_STREAMS_PER_USER", default=20)
# Tokens a user's replies may use per calendar month (UTC), per-user override in the admin (0 = none).
CHAT_MONTHLY_TOKEN_BUDGET = env.int("CHAT_MONTHLY_TOKEN_BUDGET", default=0)
# The currency of cost budgets and of the usage report's cost totals (ISO 4217).
CHAT_CURRENCY = env("CHAT_CURRENCY", default="USD")
# People a conversation may be shared with (its owner not counted).
CHAT_MAX_MEMBERS = env.int("CHAT_MAX_MEMBERS", default=50)
# A conversation its owner deleted stays (hidden, restorable by admins) this many days, then
# is purged; conversations with no activity for CHAT_RETENTION_DAYS are purged. 0 = kept for ever.
# Legal holds override both.
CHAT_DELETED_RETENTION_DAYS = env.int("CHAT_DELETED_RETENTION_DAYS", default=30)
CHAT_RETENTION_DAYS = env.int("CHAT_RETENTION_DAYS", default=0)
if min(CHAT_DELETED_RETENTION_DAYS, CHAT_RETENTION_DAYS) < 0:
    raise ImproperlyConfigured("CHAT_DELETED_RETENTION_DAYS and CHAT_RETENTION_DAYS are 0 or more days (0 = for ever).")

# One line a record on stdout: JSON for log collectors (production's default)
# or plain text for a terminal. Every record passes the two filters: its
# request's id, and no configured secret (chat/logs.py).
LOG_FORMAT = env("LOG_FORMAT", default="plain")
if LOG_FORMAT not in ("json", "plain"):
    raise ImproperlyConfigured(f"LOG_FORMAT must be json or plain, not {LOG_FORMAT!r}.")
LOG_LEVEL = env("LOG_LEVEL", default="INFO").upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "request_id": {"()": "chat.logs.RequestIdFilter"},
        "redact_secrets": {"()": "chat.logs.RedactSecretsFilter"},
    },
    "formatters": {
        "json": {"()": "chat.logs.JsonFormatter"},
        "plain": {"()": "chat.logs.PlainFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stdout",
            "formatter": LOG_FORMAT,
            "filters": ["request_id", "redact_secrets"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # Django's own handlers would print a second, unfiltered copy.
        "django": {"handlers": [], "level": LOG_LEVEL, "propagate": True},
        "django.server": {"handlers": [], "level": LOG_LEVEL, "propagate": True},
        # httpx logs every request URL at INFO; keep it quiet.
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
        # axes: failures and lockouts (WARNING) yes, a start-up banner in every manage.py output no.
        "axes": {"level": "WARNING"},
        # django-auth-ldap: directory errors (WARNING) yes, "Populating Django user" at every sign-in no.
        "django_auth_ldap": {"level": "WARNING"},
    },
}
# Opt-in, off by default: every SQL statement at DEBUG (Django logs them only
# with DEBUG=true). bench/ counts a generation's database writes with it.
if env.bool("LOG_SQL", default=False):
    LOGGING["loggers"]["django.db.backends"] = {"level": "DEBUG"}

CSRF_FAILURE_VIEW = "chat.handlers.csrf_failure"

# Static files from the app itself (no proxy in front): `make run` and tests.
# Production turns it off: nginx serves /static/ (docker/nginx.conf).
SERVE_STATIC = env.bool("SERVE_STATIC", default=True)
