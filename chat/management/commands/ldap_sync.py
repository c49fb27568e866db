"""``manage.py ldap_sync [--dry-run]``: deactivate the accounts of people the directory no longer holds.

A person removed from the directory (or from LDAP_REQUIRE_GROUP) cannot sign
in again, but a session they already have lasts until it expires. This ends
it: every active account that signed in through LDAP and that the directory
no longer allows is deactivated, which signs out its sessions and ends its
open event streams. Run it from cron (docs/auth.md); it does not run by itself.
"""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Deactivate local accounts of LDAP users who are no longer in the directory."

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="Print who would be deactivated; change nothing.")

    def handle(self, *args, dry_run, **options):
        if not settings.LDAP_SERVER_URI:
            raise CommandError("LDAP is not configured: set LDAP_SERVER_URI (docs/auth.md).")
        import ldap

        from chat.directory import directory_accounts_deactivate

        try:
            usernames = directory_accounts_deactivate(dry_run=dry_run)
        except ldap.LDAPError as exc:
            # python-ldap's error carries a dict; its "desc" names the failure without any credential.
            info = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
            reason = info.get("desc") or type(exc).__name__
            raise CommandError(
                f"The directory at {settings.LDAP_SERVER_URI} could not be asked ({reason}); nobody was deactivated."
            ) from None
        verb = "Would deactivate" if dry_run else "Deactivated"
        self.stdout.write(f"{verb} {len(usernames)} accounts no longer in the directory.")
        for username in usernames:
            self.stdout.write(f"  {username}")
