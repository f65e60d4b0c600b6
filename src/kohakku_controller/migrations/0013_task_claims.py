from django.db import migrations, models
from django.db.models import F

# Tasks that may still be claimed count one claim more than their attempts, in case a push
# was refused and its attempt number given back before this column existed: their next
# claim is then told a result key of its own. Finished tasks are never claimed again and
# keep the default (no rewrite of the whole table).
UNFINISHED = ("queued", "dispatched", "running")
BATCH = 10_000


def count_claims_so_far(apps, schema_editor):
    Task = apps.get_model("kohakku_controller", "Task")
    tasks = Task.objects.using(schema_editor.connection.alias)
    last = 0
    while True:
        batch = list(
            tasks.filter(status__in=UNFINISHED, pk__gt=last)
            .order_by("pk")
            .values_list("pk", flat=True)[:BATCH]
        )
        if not batch:
            return
        tasks.filter(pk__in=batch).update(claims=F("attempt") + 1)
        last = batch[-1]


class Migration(migrations.Migration):
    # The column is added (with a database default: no table rewrite on PostgreSQL) and
    # committed first, so the backfill's batches lock rows, never the whole table.
    atomic = False

    dependencies = [
        ("kohakku_controller", "0012_list_indexes"),
    ]

    operations = [
        migrations.AddField(
            model_name="task",
            name="claims",
            field=models.PositiveIntegerField(db_default=0, default=0, editable=False),
        ),
        migrations.RunPython(count_claims_so_far, migrations.RunPython.noop, elidable=True),
    ]
