"""Zero-config local development: `make run`."""

import secrets

from .base import *
from .base import BASE_DIR, env

DEBUG = env.bool("DEBUG", default=True)

if not SECRET_KEY:
    # A key of this checkout's own, made once and kept out of git (var/ is ignored).
    _key_file = BASE_DIR / "var" / "secret_key"
    if not _key_file.exists():
        _key_file.parent.mkdir(exist_ok=True)
        _key_file.write_text(secrets.token_urlsafe(50))
    SECRET_KEY = _key_file.read_text().strip()
