from django.db import migrations, models
from django.db.models import F


def as_of_the_last_heartbeat(apps, schema_editor):
    # Until now the list's time was taken from the last heartbeat or check-in: start there,
    # so that no task's grace changes on upgrade. The next heartbeat sets the exact time.
    Dispatcher = apps.get_model("kohakku_controller", "Dispatcher")
    Dispatcher.objects.using(schema_editor.connection.alias).filter(
        tasks_reported_at__isnull=True
    ).update(tasks_reported_at=F("last_heartbeat_at"))


class Migration(migrations.Migration):
    dependencies = [
        ("kohakku_controller", "0014_count_task_claims"),
    ]

    operations = [
        migrations.AddField(
            model_name="dispatcher",
            name="tasks_reported_at",
            field=models.DateTimeField(blank=True, editable=False, null=True),
        ),
        migrations.RunPython(as_of_the_last_heartbeat, migrations.RunPython.noop, elidable=True),
    ]
