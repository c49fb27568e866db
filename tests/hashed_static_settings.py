"""A Stack that serves static files as production names them (hashed), from its own collectstatic.

The local settings, with production's static storage (test_deploy_files.py
checks that production uses this one) and STATIC_ROOT taken from
HASHED_STATIC_ROOT: tests/browser/test_hashed_static.py runs ``collectstatic``
into it, then the app serves /static/ from there (chat.staticfiles).
"""

import os
from pathlib import Path

from config.settings.local import *  # noqa: F403
from config.settings.local import STORAGES

STORAGES = {**STORAGES, "staticfiles": {"BACKEND": "chat.staticfiles.HashedStaticFilesStorage"}}
STATIC_ROOT = Path(os.environ["HASHED_STATIC_ROOT"])
