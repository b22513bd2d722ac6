from django.db import migrations

from chat import search


def add_message_owners(apps, schema_editor):
    search.add_message_owners(schema_editor)


def remove_message_owners(apps, schema_editor):
    search.remove_message_owners(schema_editor)


class Migration(migrations.Migration):
    """Each message's conversation owner on PostgreSQL, for search (chat/search.py): a column kept by
    triggers and an index to read a person's messages newest first. Django's model state does not
    describe them: no code but the search reads the column, the database writes it."""

    dependencies = [
        ("chat", "0006_message_lease"),
    ]

    operations = [
        migrations.RunPython(add_message_owners, remove_message_owners),
    ]
