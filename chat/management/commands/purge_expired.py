"""``manage.py purge_expired [--dry-run]``: delete for good what the retention settings say has expired.

The same purge every server process runs by itself once an hour
(``reaper.purge_when_due``): conversations deleted longer ago than
CHAT_DELETED_RETENTION_DAYS, or without activity for longer than
CHAT_RETENTION_DAYS, never one under legal hold. A run writes one ``purged``
audit row with its counts; ``--dry-run`` deletes and writes nothing.
"""

from django.conf import settings
from django.core.management.base import BaseCommand

from chat import services


class Command(BaseCommand):
    help = "Purge conversations the retention settings say have expired (never any under legal hold)."

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="Print what would be purged; change nothing.")

    def handle(self, *args, dry_run, **options):
        result = services.conversation_purge_expired(dry_run=dry_run)
        counts = result.counts
        verb = "Would purge" if dry_run else "Purged"
        deleted_days, retention_days = settings.CHAT_DELETED_RETENTION_DAYS, settings.CHAT_RETENTION_DAYS
        self.stdout.write(
            f"{verb} {counts['deleted'] + counts['inactive']} conversations with {counts['messages']} messages: "
            f"{counts['deleted']} deleted more than {deleted_days} days ago"
            f"{'' if deleted_days else ' (CHAT_DELETED_RETENTION_DAYS=0: never)'}, "
            f"{counts['inactive']} inactive for more than {retention_days} days"
            f"{'' if retention_days else ' (CHAT_RETENTION_DAYS=0: never)'}; "
            f"{counts['held']} expired but kept under legal hold."
        )
        for rule, ids in (("deleted", result.deleted_ids), ("inactive", result.inactive_ids)):
            for conversation_id in ids:
                self.stdout.write(f"  {conversation_id} {rule}")
