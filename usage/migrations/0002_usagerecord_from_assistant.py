"""UsageRecord moves from assistant to usage, where it belongs (it is usage's metering). The
table stays ``assistant_usagerecord`` and no row moves: this only tells Django's migration
state that usage owns the model (assistant 0006 removes it from assistant's), and renames its
content type so permissions and admin history follow it."""

import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models


def content_type_to_usage(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    ContentType.objects.filter(app_label="assistant", model="usagerecord").update(
        app_label="usage"
    )


def content_type_to_assistant(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    ContentType.objects.filter(app_label="usage", model="usagerecord").update(
        app_label="assistant"
    )


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0003_budgets'),
        ('api', '0001_initial'),
        ('assistant', '0005_usage_metering'),
        ('contenttypes', '0002_remove_content_type_name'),
        ('usage', '0001_initial'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[
                migrations.CreateModel(
                    name='UsageRecord',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('model', models.CharField(max_length=200)),
                        ('prompt_tokens', models.PositiveIntegerField(default=0)),
                        ('completion_tokens', models.PositiveIntegerField(default=0)),
                        ('latency_ms', models.PositiveIntegerField(default=0)),
                        ('ttft_ms', models.PositiveIntegerField(blank=True, null=True)),
                        ('outcome', models.CharField(default='ok', max_length=20)),
                        ('created', models.DateTimeField(default=django.utils.timezone.now)),
                        ('provider', models.CharField(blank=True, max_length=50)),
                        ('cost_usd', models.DecimalField(decimal_places=10, default=0, max_digits=18)),
                        ('kind', models.CharField(choices=[('llm', 'LLM call'), ('tool', 'Tool execution')], default='llm', max_length=4)),
                        ('tool_calls', models.PositiveIntegerField(default=0)),
                        ('sandbox_ms', models.PositiveIntegerField(default=0)),
                        ('api_key', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='api.apikey')),
                        ('conversation', models.ForeignKey(null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='assistant.conversation')),
                        ('run', models.ForeignKey(null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='usage', to='assistant.run')),
                        ('team', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='+', to='accounts.team')),
                        ('user', models.ForeignKey(null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                    ],
                    options={
                        'db_table': 'assistant_usagerecord',
                        'indexes': [models.Index(fields=['team', 'created'], name='usage_team_created'), models.Index(condition=models.Q(('kind', 'llm'), ('outcome', 'ok')), fields=['team', 'created', 'latency_ms'], name='usage_team_latency')],
                    },
                ),
            ],
        ),
        migrations.RunPython(content_type_to_usage, content_type_to_assistant),
    ]
