"""Production: a team deployment behind a TLS-terminating proxy."""

from .base import *
from .base import env

SECRET_KEY = env("SECRET_KEY")  # required: no default
DEBUG = False
