"""Settings for the test suite (pytest-django)."""

from .base import *
from .base import env

SECRET_KEY = env("SECRET_KEY", default="test-only-not-secret")
DEBUG = False
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
ALLOWED_HOSTS = ["*"]
