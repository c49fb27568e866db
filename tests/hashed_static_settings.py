"""A Stack that serves static files as production names them (hashed), from its own collectstatic.

The local settings, with production's STORAGES and STATIC_ROOT taken from
HASHED_STATIC_ROOT: tests/browser/test_hashed_static.py runs ``collectstatic``
into it, then the app serves /static/ from there (chat.staticfiles).
"""

import os
from pathlib import Path

from config.settings.local import *  # noqa: F403
from config.settings.production import STORAGES  # noqa: F401  (exactly what production uses)

STATIC_ROOT = Path(os.environ["HASHED_STATIC_ROOT"])
