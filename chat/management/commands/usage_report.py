"""``manage.py usage_report [--since DATE] [--until DATE] [--json]``: the usage ledger per user, provider and model.

Contract v2. Reads the ledger, so replies of deleted conversations and
deleted accounts still count (the latter by their kept name).
"""

import argparse
import json
from datetime import date

from django.core.management.base import BaseCommand, CommandError

from chat.admin_reports import usage_by_user

COLUMNS = [
    ("user", "user"),
    ("provider", "provider"),
    ("model", "model"),
    ("replies", "replies"),
    ("prompt_tokens", "prompt"),
    ("completion_tokens", "completion"),
    ("total_tokens", "total"),
    ("estimated_tokens", "estimated"),
    ("cost", "cost"),
    ("currency", "currency"),
]


def _date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a date: enter it as YYYY-MM-DD, for example 2025-01-31."
        ) from None


class Command(BaseCommand):
    help = (
        "Print the usage ledger per user, provider and model: replies, prompt/completion/total tokens, "
        "estimated tokens, cost. Dates are days in TIME_ZONE, both included."
    )

    def add_arguments(self, parser):
        parser.add_argument("--since", type=_date, metavar="DATE", help="first day (YYYY-MM-DD); default: the start")
        parser.add_argument("--until", type=_date, metavar="DATE", help="last day (YYYY-MM-DD); default: today")
        parser.add_argument("--json", action="store_true", dest="as_json", help="one JSON object a line")

    def handle(self, *args, since=None, until=None, as_json=False, **options):
        if since and until and since > until:
            raise CommandError(f"--since {since} is after --until {until}: nothing can be in that range.")
        rows = [
            {**row, "user": row["user"] or "", "cost": None if row["cost"] is None else str(row["cost"])}
            for row in usage_by_user(start=since, end=until)
        ]
        if as_json:
            for row in rows:
                self.stdout.write(json.dumps({key: row[key] for key, _ in COLUMNS}, ensure_ascii=False))
            return
        table = [[title for _, title in COLUMNS]]
        table += [["-" if row[key] is None else str(row[key]) for key, _ in COLUMNS] for row in rows]
        widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
        for line in table:
            self.stdout.write("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
        if not rows:
            self.stdout.write("No replies in this range.")
