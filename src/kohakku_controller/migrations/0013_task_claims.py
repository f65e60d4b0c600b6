from django.db import migrations, models
from django.db.models import F

# Tasks that may still be claimed start with one claim per attempt so far; finished ones are
# never claimed again and keep the default (no rewrite of the whole table).
UNFINISHED = ("queued", "dispatched", "running")


def count_claims_so_far(apps, schema_editor):
    Task = apps.get_model("kohakku_controller", "Task")
    Task.objects.using(schema_editor.connection.alias).filter(status__in=UNFINISHED).update(
        claims=F("attempt")
    )


class Migration(migrations.Migration):
    dependencies = [
        ("kohakku_controller", "0012_list_indexes"),
    ]

    operations = [
        migrations.AddField(
            model_name="task",
            name="claims",
            field=models.PositiveIntegerField(default=0, editable=False),
        ),
        migrations.RunPython(count_claims_so_far, migrations.RunPython.noop, elidable=True),
    ]
