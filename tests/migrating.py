"""Moving the test database between migrations, for the data-migration tests."""

from __future__ import annotations

from typing import Any

from django.db import connection
from django.db.migrations.executor import MigrationExecutor


def migrate(targets: list[tuple[str, str]]) -> Any:
    """Migrate the test database to ``targets``; return the app registry as of then."""
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


def latest() -> list[tuple[str, str]]:
    """The newest migrations of the controller: where a test leaves the database."""
    return MigrationExecutor(connection).loader.graph.leaf_nodes("kohakku_controller")
