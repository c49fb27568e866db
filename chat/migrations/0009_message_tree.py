"""Messages form a tree: ``Message.parent`` (and ``stopped_by``).

Each existing conversation becomes a chain: a message's parent is the
message before it by (created_at, id). Then triggers, one set per database,
hold the tree's invariants where Django cannot express them as constraints:
a parent is a message of the same conversation that already exists when the
child is inserted, and neither ``parent_id`` nor ``conversation_id`` changes
afterwards. Rows thus arrive in an order in which every parent precedes its
children, so no chain of parents can loop.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

CHAIN = """
UPDATE chat_message SET parent_id = (
    SELECT p.id FROM chat_message p
    WHERE p.conversation_id = chat_message.conversation_id
      AND (p.created_at < chat_message.created_at
           OR (p.created_at = chat_message.created_at AND p.id < chat_message.id))
    ORDER BY p.created_at DESC, p.id DESC
    LIMIT 1
)
"""

REFUSAL = "a message's parent must be an existing message of the same conversation, and it cannot change"
# As an SQL string literal.
REFUSAL_SQL = "'" + REFUSAL.replace("'", "''") + "'"

SQLITE_TRIGGERS = [
    f"""
    CREATE TRIGGER chat_message_parent_insert BEFORE INSERT ON chat_message
    WHEN NEW.parent_id IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM chat_message p WHERE p.id = NEW.parent_id AND p.conversation_id = NEW.conversation_id
    )
    BEGIN SELECT RAISE(ABORT, {REFUSAL_SQL}); END
    """,
    f"""
    CREATE TRIGGER chat_message_parent_update BEFORE UPDATE OF parent_id, conversation_id ON chat_message
    WHEN NEW.parent_id IS NOT OLD.parent_id OR NEW.conversation_id IS NOT OLD.conversation_id
    BEGIN SELECT RAISE(ABORT, {REFUSAL_SQL}); END
    """,
]
SQLITE_DROP = ["DROP TRIGGER chat_message_parent_insert", "DROP TRIGGER chat_message_parent_update"]

POSTGRESQL_TRIGGERS = [
    f"""
    CREATE FUNCTION chat_message_parent_check() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'UPDATE' THEN
            IF NEW.parent_id IS DISTINCT FROM OLD.parent_id OR NEW.conversation_id IS DISTINCT FROM OLD.conversation_id
            THEN
                RAISE EXCEPTION {REFUSAL_SQL} USING ERRCODE = 'integrity_constraint_violation';
            END IF;
        ELSIF NEW.parent_id IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM chat_message p WHERE p.id = NEW.parent_id AND p.conversation_id = NEW.conversation_id
        ) THEN
            RAISE EXCEPTION {REFUSAL_SQL} USING ERRCODE = 'integrity_constraint_violation';
        END IF;
        RETURN NEW;
    END
    $$
    """,
    """
    CREATE TRIGGER chat_message_parent_check BEFORE INSERT OR UPDATE OF parent_id, conversation_id ON chat_message
    FOR EACH ROW EXECUTE FUNCTION chat_message_parent_check()
    """,
]
POSTGRESQL_DROP = [
    "DROP TRIGGER chat_message_parent_check ON chat_message",
    "DROP FUNCTION chat_message_parent_check()",
]


def install_triggers(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    statements = {"sqlite": SQLITE_TRIGGERS, "postgresql": POSTGRESQL_TRIGGERS}.get(vendor, [])
    for statement in statements:
        schema_editor.execute(statement)


def drop_triggers(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    for statement in {"sqlite": SQLITE_DROP, "postgresql": POSTGRESQL_DROP}.get(vendor, []):
        schema_editor.execute(statement)


class Migration(migrations.Migration):
    dependencies = [
        ("chat", "0008_api_token"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name="message",
            name="parent",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="children",
                to="chat.message",
            ),
        ),
        migrations.AddField(
            model_name="message",
            name="stopped_by",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="+",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.RunSQL(CHAIN, migrations.RunSQL.noop),
        migrations.RunPython(install_triggers, drop_triggers),
    ]
