"""UsageRecord now belongs to usage (usage 0002 takes it over): removed from assistant's
migration state only; the table ``assistant_usagerecord`` and its rows stay where they are."""

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('assistant', '0007_repository_sandbox_image'),
        ('usage', '0002_usagerecord_from_assistant'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[migrations.DeleteModel(name='UsageRecord')],
        ),
    ]
