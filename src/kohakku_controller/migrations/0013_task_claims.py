from django.db import migrations, models


class Migration(migrations.Migration):
    # A database default: no table rewrite on PostgreSQL, and processes still running the
    # previous release during a rolling deploy insert tasks without the column.
    dependencies = [
        ("kohakku_controller", "0012_list_indexes"),
    ]

    operations = [
        migrations.AddField(
            model_name="task",
            name="claims",
            field=models.PositiveIntegerField(db_default=0, default=0, editable=False),
        ),
    ]
