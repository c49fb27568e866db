"""The search indexes over message content and titles (``selectors.conversation_search_for_user``).

Substring search, not word search: chat text is often Chinese or Japanese,
which has no spaces between words, so a word tokenizer ('simple' tsvector)
would not find 天气 inside 今天天气很好. Both databases index trigrams:

- PostgreSQL: pg_trgm's GIN indexes on ``UPPER(content)`` and
  ``UPPER(title)``, the very expressions Django's ``icontains`` compares
  (``UPPER(content::text) LIKE UPPER('%q%')``), so the ORM lookups use them.
  pg_trgm is a trusted extension: the database's owner may create it.
- SQLite: an FTS5 table with the trigram tokenizer (SQLite >= 3.34), holding
  no copy of the text (external content: ``chat_message`` by rowid), kept in
  step by triggers; titles are short and matched by a scan.
  ``chat_message`` has no INTEGER PRIMARY KEY, so a VACUUM or a migration
  that rebuilds the table may renumber its rowids: after either,
  ``INSERT INTO chat_message_fts(chat_message_fts) VALUES('rebuild')`` (the
  tests search through the latest migration, so a rebuild that drops the
  triggers fails them).
"""

from django.db import migrations

SQLITE = [
    """
    CREATE VIRTUAL TABLE chat_message_fts USING fts5(
        content, content='chat_message', tokenize='trigram'
    )
    """,
    """
    CREATE TRIGGER chat_message_fts_insert AFTER INSERT ON chat_message BEGIN
        INSERT INTO chat_message_fts(rowid, content) VALUES (NEW.rowid, NEW.content);
    END
    """,
    """
    CREATE TRIGGER chat_message_fts_delete AFTER DELETE ON chat_message BEGIN
        INSERT INTO chat_message_fts(chat_message_fts, rowid, content) VALUES ('delete', OLD.rowid, OLD.content);
    END
    """,
    # Only when the text changes: a reply's status and usage updates leave the index alone.
    """
    CREATE TRIGGER chat_message_fts_update AFTER UPDATE OF content ON chat_message BEGIN
        INSERT INTO chat_message_fts(chat_message_fts, rowid, content) VALUES ('delete', OLD.rowid, OLD.content);
        INSERT INTO chat_message_fts(rowid, content) VALUES (NEW.rowid, NEW.content);
    END
    """,
    "INSERT INTO chat_message_fts(chat_message_fts) VALUES ('rebuild')",
]
SQLITE_DROP = [
    "DROP TRIGGER chat_message_fts_insert",
    "DROP TRIGGER chat_message_fts_delete",
    "DROP TRIGGER chat_message_fts_update",
    "DROP TABLE chat_message_fts",
]

POSTGRESQL = [
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    "CREATE INDEX message_content_trgm ON chat_message USING gin (UPPER(content) gin_trgm_ops)",
    "CREATE INDEX conversation_title_trgm ON chat_conversation USING gin (UPPER(title) gin_trgm_ops)",
]
# The extension stays: something else in the database may use it.
POSTGRESQL_DROP = ["DROP INDEX message_content_trgm", "DROP INDEX conversation_title_trgm"]


def create_index(apps, schema_editor):
    for statement in {"sqlite": SQLITE, "postgresql": POSTGRESQL}.get(schema_editor.connection.vendor, []):
        schema_editor.execute(statement)


def drop_index(apps, schema_editor):
    for statement in {"sqlite": SQLITE_DROP, "postgresql": POSTGRESQL_DROP}.get(schema_editor.connection.vendor, []):
        schema_editor.execute(statement)


class Migration(migrations.Migration):
    dependencies = [("chat", "0009_message_tree")]

    operations = [migrations.RunPython(create_index, drop_index)]
