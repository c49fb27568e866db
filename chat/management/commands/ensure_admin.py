"""``manage.py ensure_admin``: on a database with no users, create the first admin.

Takes DJANGO_SUPERUSER_USERNAME / DJANGO_SUPERUSER_PASSWORD when set;
otherwise makes user ``admin`` with a generated password and prints both once.
Does nothing when any user exists.
"""

import os
import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create the first admin account on an empty database and print its credentials once."

    def handle(self, *args, **options):
        User = get_user_model()
        if User.objects.exists():
            return
        username = os.environ.get("DJANGO_SUPERUSER_USERNAME") or "admin"
        password = os.environ.get("DJANGO_SUPERUSER_PASSWORD")
        generated = not password
        if generated:
            password = secrets.token_urlsafe(12)
        User.objects.create_superuser(username=username, password=password, email="")
        self.stdout.write(self.style.SUCCESS("Created the first admin account."))
        self.stdout.write(f"  username: {username}")
        if generated:
            self.stdout.write(f"  password: {password}   (shown once; change it in /admin/)")
        else:
            self.stdout.write("  password: from DJANGO_SUPERUSER_PASSWORD")
