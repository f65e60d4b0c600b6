from django.db import migrations, models

from ._operations import AddIndexWithoutBlockingWrites


class Migration(migrations.Migration):
    # CREATE INDEX CONCURRENTLY cannot run inside a transaction.
    atomic = False

    dependencies = [
        ('kohakku_controller', '0011_task_retention_index'),
    ]

    operations = [
        AddIndexWithoutBlockingWrites(
            model_name='task',
            index=models.Index(fields=['-created_at', '-id'], name='kohakku_task_created_idx'),
        ),
        AddIndexWithoutBlockingWrites(
            model_name='delivery',
            index=models.Index(fields=['external_id'], name='kohakku_delivery_external_idx'),
        ),
    ]
