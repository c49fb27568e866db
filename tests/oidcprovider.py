"""A small, strict OpenID Connect provider for the tests, run as a process of its own.

``python -m tests.oidcprovider CONFIG.json`` listens on 127.0.0.1 (a free
port) and prints its issuer (``http://127.0.0.1:PORT``) on stdout once it
listens. ``OIDCProvider`` below starts and drives it from a test.

What it does, as the real ones do (authorization code flow only):

- ``GET /.well-known/openid-configuration``: discovery.
- ``GET /authorize``: checks client_id, the exact redirect_uri, response_type,
  the openid scope and a PKCE S256 challenge (400 page otherwise); shows a
  login form, or with its own session cookie (``op_session``) goes straight
  back with a code. ``prompt=none`` without a valid session answers
  ``error=login_required``.
- ``POST /authorize``: the form. A wrong password shows the form again; a
  user marked inactive goes back with ``error=access_denied``.
- ``POST /token``: client_secret_basic or client_secret_post, the code once
  (60 s), the same redirect_uri, and the PKCE verifier against the challenge;
  answers an RS256 ID token (kid, iss, aud, exp, iat, nonce, the user's
  claims) and an access token.
- ``GET /jwks``: the public key of an RSA key generated at start.
- ``GET /userinfo``: the claims, for ``Authorization: Bearer <access token>``.
- ``POST /_control`` (the tests' hand): JSON ``{"users": {name: {...}}}``
  adds or replaces users, ``{"redirect_uris": [...]}`` registers them,
  ``{"tamper": "signature"|"audience"}`` spoils the next ID token.
  ``GET /_log`` lists the token requests it answered.

A user: ``{"password", "email", "name", "given_name", "family_name",
"groups": [...], "active": true}``; ``sub`` is ``"sub-" + name``.
"""

import base64
import hashlib
import html
import json
import secrets
import subprocess
import sys
import threading
import time
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

CODE_SECONDS = 60
ID_TOKEN_SECONDS = 300


class Provider:
    """The provider's state: clients, users, codes, sessions, tokens; one lock for all."""

    def __init__(self, config: dict):
        self.lock = threading.Lock()
        self.client_id = config["client_id"]
        self.client_secret = config["client_secret"]
        self.redirect_uris: list[str] = list(config.get("redirect_uris", []))
        self.users: dict[str, dict] = dict(config.get("users", {}))
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = secrets.token_hex(8)
        self.codes: dict[str, dict] = {}
        self.sessions: dict[str, str] = {}
        self.access_tokens: dict[str, str] = {}
        self.tamper: str | None = None
        self.log: list[dict] = []
        self.issuer = ""

    def claims(self, name: str) -> dict:
        user = self.users[name]
        claims = {"sub": f"sub-{name}", "preferred_username": name}
        for field in ("email", "name", "given_name", "family_name", "groups"):
            if field in user:
                claims[field] = user[field]
        if "email" in user:
            claims["email_verified"] = user.get("email_verified", True)
        return claims

    def id_token(self, name: str, nonce: str | None) -> str:
        now = int(time.time())
        payload = {
            **self.claims(name),
            "iss": self.issuer,
            "aud": self.client_id,
            "iat": now,
            "exp": now + ID_TOKEN_SECONDS,
        }
        if nonce is not None:
            payload["nonce"] = nonce
        key = self.key
        if self.tamper == "audience":
            payload["aud"] = "another-client"
        elif self.tamper == "signature":
            key = self.other_key  # same kid: only the signature check can tell
        self.tamper = None
        return jwt.encode(payload, key, algorithm="RS256", headers={"kid": self.kid})

    def jwks(self) -> dict:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        return {"keys": [{**jwk, "kid": self.kid, "alg": "RS256", "use": "sig"}]}

    def discovery(self) -> dict:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "userinfo_endpoint": f"{self.issuer}/userinfo",
            "jwks_uri": f"{self.issuer}/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "scopes_supported": ["openid", "email", "profile", "groups"],
        }


LOGIN_FORM = """<!doctype html><html><head><meta charset="utf-8"><title>Test provider</title></head>
<body><h1>Test identity provider</h1>{error}
<form method="post" action="/authorize">{hidden}
<label>Provider username <input name="username" autocomplete="off"></label>
<label>Provider password <input name="password" type="password"></label>
<button type="submit">Sign in at the provider</button></form></body></html>"""

AUTHORIZE_PARAMS = (
    "client_id",
    "redirect_uri",
    "response_type",
    "scope",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
    "prompt",
)


class Handler(BaseHTTPRequestHandler):
    provider: Provider  # set on the class by serve()

    def log_message(self, *args):  # quiet: the tests read /_log instead
        pass

    # --- plumbing ---

    def _send(self, status, body: bytes | str, content_type="text/html; charset=utf-8", headers=()):
        body = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status, data, headers=()):
        self._send(status, json.dumps(data), "application/json", headers)

    def _redirect(self, url, headers=()):
        self._send(302, "", headers=[("Location", url), *headers])

    def _form(self) -> dict[str, str]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode()
        if self.headers.get("Content-Type", "").startswith("application/json"):
            return json.loads(raw or "{}")
        return {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()}

    def _session_user(self) -> str | None:
        cookie = SimpleCookie(self.headers.get("Cookie", ""))
        morsel = cookie.get("op_session")
        name = self.provider.sessions.get(morsel.value) if morsel else None
        user = self.provider.users.get(name or "")
        return name if user and user.get("active", True) else None

    def _back(self, params: dict, **answer):
        """Redirect to the client's redirect_uri with ``answer`` and the request's state."""
        answer = {k: v for k, v in answer.items() if v is not None}
        if params.get("state"):
            answer["state"] = params["state"]
        self._redirect(f"{params['redirect_uri']}?{urlencode(answer)}")

    def _issue_code(self, params: dict, name: str):
        code = secrets.token_urlsafe(24)
        self.provider.codes[code] = {**params, "user": name, "expires": time.time() + CODE_SECONDS}
        self._back(params, code=code)

    # --- endpoints ---

    def do_GET(self):
        url = urlsplit(self.path)
        with self.provider.lock:
            if url.path == "/.well-known/openid-configuration":
                return self._json(200, self.provider.discovery())
            if url.path == "/jwks":
                return self._json(200, self.provider.jwks())
            if url.path == "/userinfo":
                return self._userinfo()
            if url.path == "/authorize":
                return self._authorize({k: v[0] for k, v in parse_qs(url.query).items()})
            if url.path == "/_log":
                return self._json(200, {"token_requests": self.provider.log})
        self._send(404, "not found")

    def do_POST(self):
        url = urlsplit(self.path)
        with self.provider.lock:
            form = self._form()
            if url.path == "/authorize":
                return self._login(form)
            if url.path == "/token":
                return self._token(form)
            if url.path == "/_control":
                return self._control(form)
        self._send(404, "not found")

    def _check_authorize(self, params) -> str | None:
        if params.get("client_id") != self.provider.client_id:
            return "unknown client_id"
        if params.get("redirect_uri") not in self.provider.redirect_uris:
            return "redirect_uri is not registered"
        return None

    def _authorize(self, params):
        problem = self._check_authorize(params)
        if problem:
            return self._send(400, f"<h1>Bad request</h1><p>{html.escape(problem)}</p>")
        if params.get("response_type") != "code":
            return self._back(params, error="unsupported_response_type")
        if "openid" not in params.get("scope", "").split():
            return self._back(params, error="invalid_scope")
        if not params.get("code_challenge") or params.get("code_challenge_method") != "S256":
            return self._back(params, error="invalid_request", error_description="PKCE S256 is required")
        name = self._session_user()
        if name is not None:
            return self._issue_code(params, name)
        if params.get("prompt") == "none":
            return self._back(params, error="login_required")
        self._login_form(params)

    def _login_form(self, params, error=""):
        hidden = "".join(
            f'<input type="hidden" name="{k}" value="{html.escape(params[k])}">'
            for k in AUTHORIZE_PARAMS
            if k in params
        )
        error = f'<p role="alert">{html.escape(error)}</p>' if error else ""
        self._send(200, LOGIN_FORM.format(hidden=hidden, error=error))

    def _login(self, form):
        params = {k: form[k] for k in AUTHORIZE_PARAMS if k in form}
        problem = self._check_authorize(params)
        if problem:
            return self._send(400, f"<h1>Bad request</h1><p>{html.escape(problem)}</p>")
        name = form.get("username", "")
        user = self.provider.users.get(name)
        if user is None or not secrets.compare_digest(user["password"], form.get("password", "")):
            return self._login_form(params, "Wrong username or password.")
        if not user.get("active", True):
            return self._back(params, error="access_denied", error_description="This account is disabled.")
        session = secrets.token_urlsafe(24)
        self.provider.sessions[session] = name
        cookie = ("Set-Cookie", f"op_session={session}; Path=/; HttpOnly; SameSite=Lax")
        code = secrets.token_urlsafe(24)
        self.provider.codes[code] = {**params, "user": name, "expires": time.time() + CODE_SECONDS}
        self._redirect(
            f"{params['redirect_uri']}?{urlencode({'code': code, 'state': params.get('state', '')})}", headers=[cookie]
        )

    def _client_authenticated(self, form) -> bool:
        header = self.headers.get("Authorization", "")
        if header.startswith("Basic "):
            client_id, _, secret = base64.b64decode(header[6:]).decode().partition(":")
        else:
            client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        return client_id == self.provider.client_id and secrets.compare_digest(secret, self.provider.client_secret)

    def _token(self, form):
        record = {k: form.get(k) for k in ("grant_type", "code_verifier", "redirect_uri")}
        self.provider.log.append(record)
        if not self._client_authenticated(form):
            return self._json(401, {"error": "invalid_client"})
        if form.get("grant_type") != "authorization_code":
            return self._json(400, {"error": "unsupported_grant_type"})
        grant = self.provider.codes.pop(form.get("code", ""), None)  # once only
        if grant is None or grant["expires"] < time.time():
            return self._json(400, {"error": "invalid_grant", "error_description": "unknown or used code"})
        if form.get("redirect_uri") != grant["redirect_uri"]:
            return self._json(400, {"error": "invalid_grant", "error_description": "redirect_uri differs"})
        verifier = form.get("code_verifier", "")
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if not verifier or not secrets.compare_digest(challenge, grant["code_challenge"]):
            return self._json(400, {"error": "invalid_grant", "error_description": "PKCE verification failed"})
        access_token = secrets.token_urlsafe(24)
        self.provider.access_tokens[access_token] = grant["user"]
        record["answered"] = True
        self._json(
            200,
            {
                "access_token": access_token,
                "token_type": "Bearer",
                "expires_in": ID_TOKEN_SECONDS,
                "id_token": self.provider.id_token(grant["user"], grant.get("nonce")),
            },
        )

    def _userinfo(self):
        header = self.headers.get("Authorization", "")
        name = self.provider.access_tokens.get(header.removeprefix("Bearer "))
        if not header.startswith("Bearer ") or name is None or name not in self.provider.users:
            return self._json(401, {"error": "invalid_token"}, headers=[("WWW-Authenticate", "Bearer")])
        self._json(200, self.provider.claims(name))

    def _control(self, body):
        for name, user in body.get("users", {}).items():
            self.provider.users[name] = user
        if "redirect_uris" in body:
            self.provider.redirect_uris = list(body["redirect_uris"])
        if "tamper" in body:
            self.provider.tamper = body["tamper"]
        self._json(200, {"ok": True})


def serve(config: dict) -> ThreadingHTTPServer:
    """Bind 127.0.0.1:``config.get("port", 0)`` and return the server (not yet serving)."""
    provider = Provider(config)
    server = ThreadingHTTPServer(
        ("127.0.0.1", config.get("port", 0)), type("Bound", (Handler,), {"provider": provider})
    )
    provider.issuer = f"http://127.0.0.1:{server.server_address[1]}"
    return server


class OIDCProvider:
    """Runs the provider as a child process: ``issuer = p.start(config)``, ``p.control(...)``, ``p.stop()``."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None
        self.issuer = ""

    def start(self, config: dict) -> str:
        path = self.workdir / "oidc-provider.json"
        path.write_text(json.dumps(config))
        root = Path(__file__).resolve().parent.parent
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.oidcprovider", str(path)], cwd=root, stdout=subprocess.PIPE, text=True
        )
        self.issuer = self.proc.stdout.readline().strip()
        if not self.issuer.startswith("http://"):
            raise RuntimeError(f"the OIDC provider did not start (exit {self.proc.poll()})")
        return self.issuer

    def control(self, **body) -> None:
        import httpx

        httpx.post(f"{self.issuer}/_control", json=body, timeout=10).raise_for_status()

    def token_requests(self) -> list[dict]:
        import httpx

        return httpx.get(f"{self.issuer}/_log", timeout=10).json()["token_requests"]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


if __name__ == "__main__":
    server = serve(json.loads(Path(sys.argv[1]).read_text()))
    print(server.RequestHandlerClass.provider.issuer, flush=True)
    server.serve_forever()
