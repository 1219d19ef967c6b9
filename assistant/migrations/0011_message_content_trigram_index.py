"""A trigram index on message text, for the sidebar's search (selectors.search_conversations:
``content__icontains``, which PostgreSQL runs as ``UPPER(content::text) LIKE UPPER(…)``, so the
index is on that expression). PostgreSQL only: SQLite (the embedded mode) scans, which is fine
at one machine's scale. pg_trgm is a trusted extension (PostgreSQL 13+): the database's owner
may create it without being a superuser."""

from django.db import migrations

CREATE = [
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    "CREATE INDEX IF NOT EXISTS msg_content_trgm ON assistant_message "
    "USING gin ((UPPER(content::text)) gin_trgm_ops)",
]
DROP = ["DROP INDEX IF EXISTS msg_content_trgm"]


def _run(statements):
    def run(apps, schema_editor):
        if schema_editor.connection.vendor != "postgresql":
            return
        for statement in statements:
            schema_editor.execute(statement)

    return run


class Migration(migrations.Migration):
    dependencies = [("assistant", "0010_toolcall_awaiting_index")]

    operations = [migrations.RunPython(_run(CREATE), _run(DROP))]
