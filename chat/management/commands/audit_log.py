"""``manage.py audit_log [--since ISO8601] [--json]``: the audit trail, oldest first, for a person or a SIEM.

Plain: one readable line a row. ``--json``: one object a line with ``at``,
``actor``, ``action``, ``target_type``, ``target_id``, ``ip``, ``request_id``
and ``detail``. Rows are streamed from the database, never loaded whole.
"""

import json
from datetime import UTC, datetime

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from chat.models import AuditEntry

# Rows fetched per round trip: a long trail streams in bounded memory.
CHUNK_SIZE = 2000
SINCE_ERROR = "--since must be an ISO 8601 date or time, e.g. 2025-03-10 or 2025-03-10T12:00:00Z; got {!r}."


def parse_since(value: str) -> datetime:
    """The instant ``value`` names; a bare date is its midnight and a naive time is in TIME_ZONE."""
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise CommandError(SINCE_ERROR.format(value)) from None
    return when if timezone.is_aware(when) else timezone.make_aware(when)


def _at(entry) -> str:
    return entry.at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def entry_to_dict(entry) -> dict:
    """One row as the ``--json`` line shows it."""
    return {
        "at": _at(entry),
        "actor": entry.actor_name,
        "action": entry.action,
        "target_type": entry.target_type,
        "target_id": entry.target_id,
        "ip": entry.ip,
        "request_id": entry.request_id,
        "detail": entry.detail,
    }


def entry_to_line(entry) -> str:
    """One row as a readable line: when, who, what, which object, from where, and the detail."""
    target = f"{entry.target_type}:{entry.target_id}" if entry.target_id else entry.target_type or "-"
    detail = json.dumps(entry.detail, ensure_ascii=False, sort_keys=True) if entry.detail else ""
    line = f"{_at(entry)} {entry.actor_name} {entry.action} {target} ip={entry.ip or '-'}"
    return f"{line} request={entry.request_id or '-'} {detail}".rstrip()


class Command(BaseCommand):
    help = "Print the audit trail, oldest first (--json: one object a line, for a SIEM)."

    def add_arguments(self, parser):
        parser.add_argument("--since", help="only rows at or after this ISO 8601 date or time")
        parser.add_argument("--json", action="store_true", dest="as_json", help="one JSON object a line")

    def handle(self, *args, since=None, as_json=False, **options):
        entries = AuditEntry.objects.order_by("at", "id")
        if since is not None:
            entries = entries.filter(at__gte=parse_since(since))
        for entry in entries.iterator(chunk_size=CHUNK_SIZE):
            if as_json:
                self.stdout.write(json.dumps(entry_to_dict(entry), ensure_ascii=False, separators=(",", ":")))
            else:
                self.stdout.write(entry_to_line(entry))
