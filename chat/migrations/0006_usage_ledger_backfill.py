"""Back-fill the usage ledger from the assistant replies that had already ended.

Written against the historical models only (``apps.get_model``): the app's
services may change, this must not. No cost: prices did not exist yet.
"""

from django.db import migrations, models
from django.db.models.functions import Coalesce

FINAL_STATUSES = ["complete", "failed", "cancelled", "interrupted"]
BATCH = 1000


def backfill(apps, schema_editor):
    """One ledger row per final reply that has none, dated when it ended, for the user who asked for it.

    Replies stored before ``requested_by`` existed count for the author of
    the user message just before them (as the old usage report did).
    """
    Message = apps.get_model("chat", "Message")
    UsageEntry = apps.get_model("chat", "UsageEntry")
    done = set(UsageEntry.objects.values_list("message_id", flat=True))
    asked_by = (
        Message.objects.filter(
            conversation=models.OuterRef("conversation"), role="user", created_at__lt=models.OuterRef("created_at")
        )
        .order_by("-created_at", "-id")
        .values("author_id")[:1]
    )
    replies = (
        Message.objects.filter(role="assistant", status__in=FINAL_STATUSES)
        .annotate(
            asker_id=Coalesce("requested_by_id", models.Subquery(asked_by), output_field=models.BigIntegerField())
        )
        .order_by("created_at", "id")
    )
    User = Message._meta.get_field("author").related_model
    names = dict(User.objects.values_list("pk", "username"))
    rows = []
    for reply in replies.iterator(chunk_size=BATCH):
        if reply.id in done:
            continue
        prompt, completion = reply.prompt_tokens or 0, reply.completion_tokens or 0
        rows.append(
            UsageEntry(
                message_id=reply.id,
                conversation_id=reply.conversation_id,
                requested_by_id=reply.asker_id,
                requested_by_name=names.get(reply.asker_id, ""),
                model=reply.model or "",
                status=reply.status,
                prompt_tokens=prompt,
                completion_tokens=completion,
                total_tokens=reply.total_tokens if reply.total_tokens is not None else prompt + completion,
                estimated=reply.usage_estimated,
                created_at=reply.completed_at or reply.created_at,
            )
        )
        if len(rows) >= BATCH:
            UsageEntry.objects.bulk_create(rows)
            rows = []
    UsageEntry.objects.bulk_create(rows)


class Migration(migrations.Migration):
    dependencies = [
        ("chat", "0005_governance"),
    ]

    operations = [
        migrations.AlterField(
            model_name="usagelimit",
            name="monthly_token_budget",
            field=models.PositiveBigIntegerField(
                blank=True,
                help_text="Tokens per calendar month (UTC) (empty: CHAT_MONTHLY_TOKEN_BUDGET; 0: no budget).",
                null=True,
            ),
        ),
        # Reversing leaves the ledger as it is: its rows are history, not derived data.
        migrations.RunPython(backfill, migrations.RunPython.noop),
    ]
