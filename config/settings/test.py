"""Settings for the test suite (pytest-django)."""

from .base import *
from .base import env

SECRET_KEY = env("SECRET_KEY", default="test-only-not-secret")
DEBUG = False
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
ALLOWED_HOSTS = ["*"]
# The in-process tests' transaction lives on the test's thread (see chat/db.py);
# the tests that start real daphne processes use the local settings.
CHAT_DB_SHARED_POOL = False
