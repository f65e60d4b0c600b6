"""Single-row reads assembled once, for the request paths every dispatcher hits.

The ORM compiles a query to SQL on every call. On the hottest paths (the bearer-token
lookup behind every OAuth2 request, the callback's task lookup, the heartbeat) that
compilation costs more CPU than the database's own work. The helpers here build their
statement once per database from the models' metadata, and turn rows into model
instances exactly as the ORM does: the same columns, the database's and the fields'
converters, then ``Model.from_db``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from django.db import connections, router
from django.db.models import Field, ForeignKey, Model


def model_from_row(
    connection: Any, model: type[Model], fields: Sequence[Field], values: Sequence[Any]
) -> Model:
    """An instance of ``model`` from raw database ``values`` of ``fields`` (in that order).

    Fields left out are deferred, as with ``QuerySet.defer()``.
    """
    table = model._meta.db_table
    converted = []
    for field, value in zip(fields, values, strict=True):
        column = field.get_col(table)
        for converter in connection.ops.get_db_converters(column) + field.get_db_converters(
            connection
        ):
            value = converter(value, column, connection)
        converted.append(value)
    return model.from_db(connection.alias, [field.attname for field in fields], converted)


class JoinedLookup:
    """``model`` by one unique field, with forward foreign keys joined, in one statement.

    ``related`` names foreign keys of ``model`` whose rows are read in the same statement
    (a ``LEFT OUTER JOIN`` each, like ``select_related``); ``defer`` names fields of
    ``model`` left unread. For example::

        task_with_dispatcher = JoinedLookup(Task, "guid", related=["dispatcher"], defer=["input"])
        task = task_with_dispatcher.get(guid)  # None when no row matches
    """

    def __init__(
        self,
        model: type[Model],
        field: str,
        *,
        related: Iterable[str] = (),
        defer: Iterable[str] = (),
    ) -> None:
        meta = model._meta
        deferred = set(defer)
        self.model = model
        self.key = meta.get_field(field)
        self.fields = [f for f in meta.concrete_fields if f.name not in deferred]
        self.relations: list[ForeignKey] = [meta.get_field(name) for name in related]
        self._statements: dict[str, str] = {}

    def get(self, value: Any, *, using: str | None = None) -> Model | None:
        """The instance whose key field equals ``value``, or ``None``.

        ``value`` is prepared by the key field, so a malformed one raises what the ORM
        would (``ValidationError`` for a bad UUID, for example).
        """
        alias = using or router.db_for_read(self.model)
        connection = connections[alias]
        parameter = self.key.get_db_prep_value(value, connection)
        with connection.cursor() as cursor:
            cursor.execute(self._statement(connection), [parameter])
            row = cursor.fetchone()
        if row is None:
            return None
        start = len(self.fields)
        instance = model_from_row(connection, self.model, self.fields, row[:start])
        for relation in self.relations:
            related_fields = relation.related_model._meta.concrete_fields
            values = row[start : start + len(related_fields)]
            start += len(related_fields)
            if getattr(instance, relation.attname) is not None:
                related = model_from_row(connection, relation.related_model, related_fields, values)
                relation.set_cached_value(instance, related)
        return instance

    def _statement(self, connection: Any) -> str:
        statement = self._statements.get(connection.alias)
        if statement is None:
            statement = self._statements[connection.alias] = self._assemble(connection)
        return statement

    def _assemble(self, connection: Any) -> str:
        quote = connection.ops.quote_name

        def columns(alias: str, fields: Iterable[Field]) -> list[str]:
            return [f"{alias}.{quote(field.column)}" for field in fields]

        selected = columns("t0", self.fields)
        joins = []
        for number, relation in enumerate(self.relations, start=1):
            alias = f"t{number}"
            related_meta = relation.related_model._meta
            selected += columns(alias, related_meta.concrete_fields)
            joins.append(
                f"LEFT OUTER JOIN {quote(related_meta.db_table)} {alias} "
                f"ON {alias}.{quote(relation.target_field.column)} = t0.{quote(relation.column)}"
            )
        # Only quoted identifiers from the models' metadata; the value is a bound parameter.
        return (
            f"SELECT {', '.join(selected)} "  # noqa: S608
            f"FROM {quote(self.model._meta.db_table)} t0 {' '.join(joins)} "
            f"WHERE t0.{quote(self.key.column)} = %s"
        )
