from django.db import migrations

from chat import search


def create_index(apps, schema_editor):
    search.create_index(schema_editor)


def drop_index(apps, schema_editor):
    search.drop_index(schema_editor)


class Migration(migrations.Migration):
    """The search index (chat/search.py): FTS5 tables and their triggers on SQLite, trigram indexes on
    PostgreSQL. Written by the database's own SQL, which Django's model state does not describe."""

    dependencies = [
        ("chat", "0002_api_token"),
    ]

    operations = [
        migrations.RunPython(create_index, drop_index),
    ]
