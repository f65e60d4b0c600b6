from django.db import migrations
from django.db.models import F
from django.db.models.functions import Greatest

# Tasks that may still be claimed count one claim more than their attempts, in case a push
# was refused and its attempt number given back before the column existed: their next
# claims are then told result keys of their own. Finished tasks are never claimed again and
# keep the default (no rewrite of the whole table). A count never goes down, so running this
# again (after a failure part way) is safe.
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
        tasks.filter(pk__in=batch).update(claims=Greatest(F("claims"), F("attempt") + 1))
        last = batch[-1]


class Migration(migrations.Migration):
    # Each batch commits on its own: rows are locked a batch at a time, never the table.
    atomic = False

    dependencies = [
        ("kohakku_controller", "0013_task_claims"),
    ]

    operations = [
        migrations.RunPython(count_claims_so_far, migrations.RunPython.noop, elidable=True),
    ]
