"""A Stack that serves static files as production names them (hashed), from its own collectstatic.

The local settings with production's static storage (test_deploy_files.py
checks that production uses this one): tests/browser/test_hashed_static.py
runs ``collectstatic`` into the Stack's STATIC_ROOT, then the app serves
/static/ from there (chat.staticfiles).
"""

from config.settings.local import *  # noqa: F403
from config.settings.local import STORAGES

STORAGES = {**STORAGES, "staticfiles": {"BACKEND": "chat.staticfiles.HashedStaticFilesStorage"}}
