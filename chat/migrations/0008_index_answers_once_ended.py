from django.db import migrations

from chat import search


def index_answers_once_ended(apps, schema_editor):
    search.index_answers_once_ended(schema_editor)


class Migration(migrations.Migration):
    """SQLite's search index (chat/search.py) learns an answer once it has ended, not at each of its
    checkpoints while it streams: the messages' triggers again, and the index filled again."""

    dependencies = [
        ("chat", "0007_message_owner"),
    ]

    operations = [
        # Going back keeps the new triggers: they index the same ended messages, which is all the
        # older code searched for in practice.
        migrations.RunPython(index_answers_once_ended, migrations.RunPython.noop),
    ]
