"""``manage.py ensure_admin``: on a database with no users, create the first admin.

Takes DJANGO_SUPERUSER_USERNAME / DJANGO_SUPERUSER_PASSWORD when set;
otherwise makes user ``admin`` with a generated password and prints both once.
Does nothing when any user exists. ``manage.py serve --ensure-admin`` (what
``make run`` runs) does the same and prints them in its start-up block.
"""

import os
import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


def ensure_first_admin() -> tuple[str, str | None] | None:
    """On a database with no users, create the first admin; return (username, password), None if any user exists.

    The password is None when it came from DJANGO_SUPERUSER_PASSWORD (the
    person who set it knows it); otherwise it is generated here and exists
    nowhere else: whoever calls this shows it once.
    """
    User = get_user_model()
    if User.objects.exists():
        return None
    username = os.environ.get("DJANGO_SUPERUSER_USERNAME") or "admin"
    given = os.environ.get("DJANGO_SUPERUSER_PASSWORD")
    password = given or secrets.token_urlsafe(12)
    User.objects.create_superuser(username=username, password=password, email="")
    return username, (None if given else password)


def credentials_lines(username: str, password: str | None) -> list[str]:
    """The lines that give the first admin's name and password (``serve --ensure-admin`` prints them too)."""
    shown = f"{password}   (shown once; change it from your name's menu: Change password)" if password else None
    return [f"  username: {username}", f"  password: {shown or 'from DJANGO_SUPERUSER_PASSWORD'}"]


class Command(BaseCommand):
    help = "Create the first admin account on an empty database and print its credentials once."

    def handle(self, *args, **options):
        created = ensure_first_admin()
        if created is None:
            return
        self.stdout.write(self.style.SUCCESS("Created the first admin account."))
        for line in credentials_lines(*created):
            self.stdout.write(line)
