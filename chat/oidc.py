"""Sign-in with the company's OpenID Connect provider, on mozilla-django-oidc; the PASSWORD_LOGIN switch.

mozilla-django-oidc does the protocol (authorization code flow, PKCE S256,
state and nonce in the session, the ID token's RS256 signature from the
JWKS). This module adds what it lacks: discovery from ``OIDC_ISSUER``, the
ID token's audience and issuer, the username/email-domain/group rules, a
page that says why a sign-in was refused, and ending a person's OIDC
sessions (and so their open streams) when the provider stops vouching for
them. Configured only when ``OIDC_ISSUER`` is set (config/settings/base.py).
"""

import logging
import threading

import jwt
import requests
from django import forms
from django.conf import settings
from django.contrib import auth
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import BACKEND_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.sessions.models import Session
from django.core.exceptions import SuspiciousOperation
from django.db import transaction
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.utils.functional import cached_property
from mozilla_django_oidc.auth import OIDCAuthenticationBackend
from mozilla_django_oidc.middleware import SessionRefresh as LibrarySessionRefresh
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView, OIDCAuthenticationRequestView

from . import publish

log = logging.getLogger(__name__)

BACKEND_PATH = "chat.oidc.OIDCBackend"
DISCOVERY_TIMEOUT_SECONDS = 10
# The library's endpoint settings, answered from the discovery document.
_ENDPOINTS = {
    "OIDC_OP_AUTHORIZATION_ENDPOINT": "authorization_endpoint",
    "OIDC_OP_TOKEN_ENDPOINT": "token_endpoint",
    "OIDC_OP_USER_ENDPOINT": "userinfo_endpoint",
    "OIDC_OP_JWKS_ENDPOINT": "jwks_uri",
}


class ProviderUnavailable(Exception):
    """The provider's discovery document could not be read, or does not describe ``OIDC_ISSUER``."""


class SignInRefused(Exception):
    """A sign-in the app refuses: ``code`` (snake_case), a sentence for the person, an HTTP status."""

    def __init__(self, code: str, message: str, status: int = 403):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


_metadata: dict | None = None
_metadata_lock = threading.Lock()


def provider_metadata() -> dict:
    """The provider's discovery document (``OIDC_ISSUER`` + ``/.well-known/openid-configuration``).

    Fetched at the first OIDC sign-in of the process and kept (a failure is
    not kept: the next sign-in tries again), never at start-up, so that
    ``migrate`` and password sign-ins work while the provider is down.
    Raises ProviderUnavailable when it cannot be fetched, lacks an endpoint,
    or names another issuer (the spec's check against a mix-up).
    """
    global _metadata
    with _metadata_lock:
        if _metadata is None:
            url = settings.OIDC_ISSUER.rstrip("/") + "/.well-known/openid-configuration"
            try:
                response = requests.get(url, timeout=DISCOVERY_TIMEOUT_SECONDS, verify=settings.OIDC_VERIFY_SSL)
                response.raise_for_status()
                document = response.json()
            except (requests.RequestException, ValueError) as exc:
                raise ProviderUnavailable(f"discovery at {url} failed: {type(exc).__name__}") from None
            if document.get("issuer", "").rstrip("/") != settings.OIDC_ISSUER.rstrip("/"):
                raise ProviderUnavailable(f"discovery at {url} names the issuer {document.get('issuer')!r}")
            missing = [key for key in _ENDPOINTS.values() if not document.get(key)]
            if missing:
                raise ProviderUnavailable(f"discovery at {url} lacks {', '.join(missing)}")
            _metadata = document
        return _metadata


def refused(request, code: str, message: str, status: int = 403):
    """The page that says why a sign-in did not happen (``status``, ``code``, ``message``), with a way back."""
    log.warning("OpenID Connect sign-in refused: %s", code)
    return render(request, "registration/oidc_refused.html", {"code": code, "message": message}, status=status)


class OIDCBackend(OIDCAuthenticationBackend):
    """The authentication backend for OIDC sign-ins, called only by ``CallbackView``.

    ``authenticate`` takes no username or password, so Django's password
    sign-ins never reach it (and axes never counts an OIDC sign-in). Every
    sign-in re-reads the claims: email, names, and ``is_staff`` /
    ``is_superuser`` from the groups claim when ``OIDC_STAFF_GROUPS`` /
    ``OIDC_SUPERUSER_GROUPS`` are set. Raises SignInRefused with the reason.
    """

    def __init__(self, *args, **kwargs):
        # The library reads the endpoints here; ours come from discovery, at the first OIDC sign-in
        # (backends are also built to load the user of every request's session).
        self.UserModel = get_user_model()

    @staticmethod
    def get_settings(attr, *args):
        if attr in _ENDPOINTS:
            return provider_metadata()[_ENDPOINTS[attr]]
        return getattr(settings, attr, *args)

    def authenticate(self, request, *, nonce, code_verifier):
        """The user of the code in ``request.GET``, or None; writes the user (created or updated)."""
        self.OIDC_OP_TOKEN_ENDPOINT = self.get_settings("OIDC_OP_TOKEN_ENDPOINT")
        self.OIDC_OP_USER_ENDPOINT = self.get_settings("OIDC_OP_USER_ENDPOINT")
        self.OIDC_OP_JWKS_ENDPOINT = self.get_settings("OIDC_OP_JWKS_ENDPOINT")
        self.OIDC_RP_CLIENT_ID = settings.OIDC_RP_CLIENT_ID
        self.OIDC_RP_CLIENT_SECRET = settings.OIDC_RP_CLIENT_SECRET
        self.OIDC_RP_SIGN_ALGO = settings.OIDC_RP_SIGN_ALGO
        self.OIDC_RP_IDP_SIGN_KEY = None
        return super().authenticate(request, nonce=nonce, code_verifier=code_verifier)

    # The library's get_user skips the is_active check: a deactivated user's session must end.
    get_user = ModelBackend.get_user

    def _verify_jws(self, payload, key):
        """The ID token's claims once its signature, audience (our client id), issuer and expiry hold."""
        try:
            return jwt.decode(
                payload,
                key,
                algorithms=[self.OIDC_RP_SIGN_ALGO],
                audience=self.OIDC_RP_CLIENT_ID,
                issuer=provider_metadata()["issuer"],
                options={"require": ["exp", "iat", "aud", "iss", "sub"]},
            )
        except jwt.InvalidTokenError as exc:
            raise SuspiciousOperation(f"ID token refused: {type(exc).__name__}") from None

    def get_userinfo(self, access_token, id_token, payload):
        """The ID token's claims updated with the userinfo endpoint's (same ``sub``, as the spec requires).

        Both: Entra ID puts groups only in the ID token, others only in userinfo.
        """
        userinfo = super().get_userinfo(access_token, id_token, payload)
        if userinfo.get("sub") != payload.get("sub"):
            raise SuspiciousOperation("userinfo is about another subject than the ID token")
        return {**payload, **userinfo}

    def get_or_create_user(self, access_token, id_token, payload):
        claims = self.get_userinfo(access_token, id_token, payload)
        username = str(claims.get(settings.OIDC_USERNAME_CLAIM) or "").strip()
        if not username:
            raise SignInRefused(
                "username_claim_missing",
                f"The provider sent no {settings.OIDC_USERNAME_CLAIM!r} claim to use as your username; "
                "ask an administrator to check OIDC_USERNAME_CLAIM.",
            )
        email = str(claims.get("email") or "")
        if settings.OIDC_ALLOWED_EMAIL_DOMAINS:
            domain = email.rpartition("@")[2].lower()
            if not email or claims.get("email_verified") is False or domain not in settings.OIDC_ALLOWED_EMAIL_DOMAINS:
                raise SignInRefused(
                    "email_domain_not_allowed",
                    "Your account's email address is not in a domain allowed to sign in here "
                    f"({', '.join(settings.OIDC_ALLOWED_EMAIL_DOMAINS)}).",
                )
        with transaction.atomic():
            users = list(self.UserModel.objects.select_for_update().filter(username__iexact=username)[:2])
            if len(users) > 1:
                raise SignInRefused(
                    "username_ambiguous", f"More than one account is named {username!r}; ask an administrator."
                )
            if not users:
                if not settings.OIDC_CREATE_USERS:
                    raise SignInRefused(
                        "no_account",
                        f"There is no Team Chat account for {username!r}; ask an administrator to create one.",
                    )
                user = self.UserModel(username=username)
                user.set_unusable_password()
            else:
                user = users[0]
                if not user.is_active:
                    raise SignInRefused(
                        "account_inactive", "Your Team Chat account is deactivated; ask an administrator."
                    )
            self._apply_claims(user, claims, email)
        return user

    def _apply_claims(self, user, claims, email):
        """Copy email, names and the group-given rights onto ``user``; save only what changed."""
        fields = {
            "email": email or user.email,
            "first_name": str(claims.get("given_name") or user.first_name)[:150],
            "last_name": str(claims.get("family_name") or user.last_name)[:150],
        }
        groups = claims.get(settings.OIDC_GROUPS_CLAIM) or []
        groups = {str(g) for g in (groups if isinstance(groups, list) else [groups])}
        if settings.OIDC_STAFF_GROUPS:
            fields["is_staff"] = bool(groups & set(settings.OIDC_STAFF_GROUPS))
        if settings.OIDC_SUPERUSER_GROUPS:
            fields["is_superuser"] = bool(groups & set(settings.OIDC_SUPERUSER_GROUPS))
            # A superuser without staff could not open the admin.
            fields["is_staff"] = fields["is_superuser"] or fields.get("is_staff", user.is_staff)
        changed = [name for name, value in fields.items() if getattr(user, name) != value]
        for name in changed:
            setattr(user, name, fields[name])
        if user.pk is None:
            user.save()
        elif changed:
            # A save of these fields makes that user's open streams re-validate (chat.receivers).
            user.save(update_fields=changed)


class AuthenticateView(OIDCAuthenticationRequestView):
    """``/oidc/authenticate/``: off to the provider's authorization endpoint with state, nonce and PKCE."""

    def __init__(self, **kwargs):
        super(OIDCAuthenticationRequestView, self).__init__(**kwargs)  # not the library's: no discovery yet
        self.OIDC_RP_CLIENT_ID = settings.OIDC_RP_CLIENT_ID

    @staticmethod
    def get_settings(attr, *args):
        return OIDCBackend.get_settings(attr, *args)

    def get(self, request):
        try:
            self.OIDC_OP_AUTH_ENDPOINT = self.get_settings("OIDC_OP_AUTHORIZATION_ENDPOINT")
        except ProviderUnavailable as exc:
            log.error("OpenID Connect provider unavailable: %s", exc)
            return refused(request, "provider_unavailable", PROVIDER_UNAVAILABLE, status=502)
        return super().get(request)


PROVIDER_UNAVAILABLE = "The sign-in provider cannot be reached right now; try again in a minute."


class CallbackView(OIDCAuthenticationCallbackView):
    """``/oidc/callback/``: the provider's answer. Signs the person in, or says why not.

    An error answer to a session refresh (``SessionRefresh`` below: the
    provider no longer signs this person in silently) ends every OIDC
    session of that user, so their open streams end with ``access.revoked``.
    """

    @staticmethod
    def get_settings(attr, *args):
        return OIDCBackend.get_settings(attr, *args)

    def get(self, request):
        states = request.session.get("oidc_states")
        states = states if isinstance(states, dict) else {}
        state = request.GET.get("state", "")
        if request.GET.get("error"):
            if state in states:
                del states[state]
                request.session.save()
            if request.user.is_authenticated and request.session.get(BACKEND_SESSION_KEY) == BACKEND_PATH:
                end_oidc_sessions(user_id=request.user.pk)
            if request.user.is_authenticated:
                auth.logout(request)
            error = request.GET["error"][:100]
            return refused(request, "provider_refused", f"The sign-in provider refused the sign-in ({error}).")
        if not request.GET.get("code") or state not in states:
            return refused(
                request,
                "invalid_state",
                "This sign-in answer does not belong to a sign-in started in this browser (or was used already); "
                "start again.",
                status=400,
            )
        started = states.pop(state)
        request.session.save()
        # Reload the session: another tab may have changed it while the provider was asked (as the library does).
        request.session = request.session.__class__(request.session.session_key)
        try:
            user = OIDCBackend().authenticate(
                request, nonce=started.get("nonce"), code_verifier=started.get("code_verifier")
            )
        except SignInRefused as exc:
            return refused(request, exc.code, exc.message, status=exc.status)
        except SuspiciousOperation as exc:
            log.warning("OpenID Connect answer not verified: %s", exc)
            return refused(request, "invalid_id_token", "The provider's answer could not be verified.", status=400)
        except (ProviderUnavailable, requests.RequestException) as exc:
            log.error("OpenID Connect provider failed: %s", type(exc).__name__)
            return refused(request, "provider_unavailable", PROVIDER_UNAVAILABLE, status=502)
        if user is None:
            return refused(request, "sign_in_failed", "The provider did not sign you in; start again.", status=400)
        user.backend = BACKEND_PATH
        self.user = user
        return self.login_success()


class SessionRefresh(LibrarySessionRefresh):
    """Past the ID token's lifetime (``OIDC_RENEW_ID_TOKEN_EXPIRY_SECONDS``), a page load goes to the provider.

    With ``prompt=none``: a person the provider still signs in comes straight
    back (groups re-read); otherwise ``CallbackView`` ends their OIDC
    sessions. Only page GETs of OIDC sessions: ``/api/`` (JSON, event
    streams) passes through untouched, without a thread hop.
    """

    def __init__(self, get_response):
        # Not the library's __init__: it would read the endpoint (discovery) when the process starts.
        super(LibrarySessionRefresh, self).__init__(get_response)
        self.OIDC_RP_CLIENT_ID = settings.OIDC_RP_CLIENT_ID
        self.OIDC_EXEMPT_URLS = []
        self.OIDC_STATE_SIZE = 32
        self.OIDC_AUTHENTICATION_CALLBACK_URL = "oidc_authentication_callback"
        self.OIDC_RP_SCOPES = settings.OIDC_RP_SCOPES
        self.OIDC_USE_NONCE = True
        self.OIDC_NONCE_SIZE = 32

    @staticmethod
    def get_settings(attr, *args):
        return getattr(settings, attr, *args)

    @cached_property
    def exempt_urls(self):
        return {reverse("oidc_authentication_init"), reverse("oidc_authentication_callback")}

    def __call__(self, request):
        if request.path.startswith("/api/"):
            return self.get_response(request)  # a coroutine in async mode, awaited by the caller
        return super().__call__(request)

    def process_request(self, request):
        if not self.is_refreshable_url(request) or request.session.get(BACKEND_SESSION_KEY) != BACKEND_PATH:
            return None
        try:
            self.OIDC_OP_AUTHORIZATION_ENDPOINT = provider_metadata()["authorization_endpoint"]
        except ProviderUnavailable as exc:
            # Keep the session rather than lock everyone out while the provider is down.
            log.error("OpenID Connect session refresh skipped, provider unavailable: %s", exc)
            return None
        return super().process_request(request)


def end_oidc_sessions(*, user_id) -> int:
    """Delete every session of ``user_id`` signed in through OIDC; tell their open streams. Returns how many.

    Reads every unexpired session of the database session store (the
    default; other stores keep no list of sessions): only on a refused
    refresh, which is rare. Password sessions (a break-glass superuser's) stay.
    """
    ended = []
    for session in Session.objects.filter(expire_date__gt=timezone.now()).iterator():
        data = session.get_decoded()
        if data.get(SESSION_KEY) == str(user_id) and data.get(BACKEND_SESSION_KEY) == BACKEND_PATH:
            ended.append(session.session_key)
    Session.objects.filter(session_key__in=ended).delete()
    transaction.on_commit(lambda: publish.access_changed(user_id=user_id))
    return len(ended)


PASSWORD_LOGIN_OFF = "Password sign-in is turned off: use the button above to sign in with {name}."


class _PasswordLoginRule:
    """With ``PASSWORD_LOGIN=false`` only superusers may sign in with a password (the break-glass way in)."""

    def confirm_login_allowed(self, user):
        super().confirm_login_allowed(user)
        if not settings.PASSWORD_LOGIN and not user.is_superuser:
            self.password_login_refused = True
            raise forms.ValidationError(
                PASSWORD_LOGIN_OFF.format(name=settings.OIDC_PROVIDER_NAME), code="password_login_off"
            )


class PasswordLoginForm(_PasswordLoginRule, AuthenticationForm):
    """The login page's form (``/accounts/login/``)."""


class AdminPasswordLoginForm(_PasswordLoginRule, AdminAuthenticationForm):
    """The admin's login form (``/admin/login/``)."""
