"""Statements assembled once, for the request paths every dispatcher hits.

The ORM compiles a query to SQL on every call. On the hottest paths (the bearer-token
lookup behind every OAuth2 request, the callback's task lookup and state change, the
heartbeat) that compilation costs more CPU than the database's own work. The helpers here
build their statement once per database and shape from the models' metadata, prepare values
through the fields exactly as the ORM does, and turn rows into model instances as the ORM
does: the same columns, the database's and the fields' converters, then ``Model.from_db``.
Like ``QuerySet.update()`` and ``bulk_create()``, they send no model signals.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from django.db import connections, router
from django.db.models import Field, ForeignKey, Model


class RowReader:
    """Builds instances of ``model`` from raw database rows holding ``fields`` in order.

    Values pass through the database's and the fields' converters, then ``Model.from_db``,
    as the ORM does; fields left out are deferred, as with ``QuerySet.defer()``. Which
    converters apply is worked out once per database, not once per row.
    """

    def __init__(self, model: type[Model], fields: Sequence[Field]) -> None:
        self.model = model
        self.fields = tuple(fields)
        self.attnames = [field.attname for field in self.fields]
        self._converters: dict[str, list[tuple[int, Any, list[Any]]]] = {}

    def __len__(self) -> int:
        return len(self.fields)

    def instance(self, connection: Any, values: Sequence[Any]) -> Model:
        converters = self._converters.get(connection.alias)
        if converters is None:
            converters = self._converters[connection.alias] = self._find_converters(connection)
        if converters:
            values = list(values)
            for index, column, functions in converters:
                value = values[index]
                for function in functions:
                    value = function(value, column, connection)
                values[index] = value
        return self.model.from_db(connection.alias, self.attnames, values)

    def _find_converters(self, connection: Any) -> list[tuple[int, Any, list[Any]]]:
        table = self.model._meta.db_table
        found = []
        for index, field in enumerate(self.fields):
            column = field.get_col(table)
            functions = connection.ops.get_db_converters(column) + field.get_db_converters(
                connection
            )
            if functions:
                found.append((index, column, functions))
        return found


class JoinedLookup:
    """``model`` by one unique field, with forward foreign keys joined, in one statement.

    ``related`` names foreign keys of ``model`` whose rows are read in the same statement
    (a ``LEFT OUTER JOIN`` each, like ``select_related``); ``defer`` names fields left unread,
    as ``QuerySet.defer()`` does (``"dispatcher__labels"`` for a field of a related row); a
    deferred field is read by its own query if it is used after all. For example::

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
        self.reader = RowReader(model, _read_fields(model, deferred, prefix=""))
        self.relations: list[tuple[ForeignKey, RowReader]] = []
        for name in related:
            relation = meta.get_field(name)
            fields = _read_fields(relation.related_model, deferred, prefix=f"{name}__")
            self.relations.append((relation, RowReader(relation.related_model, fields)))
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
        start = len(self.reader)
        instance = self.reader.instance(connection, row[:start])
        for relation, reader in self.relations:
            values = row[start : start + len(reader)]
            start += len(reader)
            if getattr(instance, relation.attname) is not None:
                relation.set_cached_value(instance, reader.instance(connection, values))
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

        selected = columns("t0", self.reader.fields)
        joins = []
        for number, (relation, reader) in enumerate(self.relations, start=1):
            alias = f"t{number}"
            related_meta = relation.related_model._meta
            selected += columns(alias, reader.fields)
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


def _read_fields(model: type[Model], deferred: set[str], *, prefix: str) -> list[Field]:
    """The concrete fields of ``model`` that are read: all but the deferred (never the key)."""
    return [
        field
        for field in model._meta.concrete_fields
        if field.primary_key or f"{prefix}{field.name}" not in deferred
    ]


def update_rows(
    model: type[Model],
    where: Mapping[str, Any],
    changes: Mapping[str, Any],
    *,
    using: str | None = None,
    asynchronous_commit: bool = False,
) -> int:
    """``UPDATE`` the rows of ``model`` that match ``where``, setting ``changes``; the count.

    ``where`` maps field names to a value (``=``; ``None`` means ``IS NULL``) or to a tuple,
    list or set of values (``IN``). As ``QuerySet.filter(...).update(...)``, in one statement
    assembled once per database and shape.

    With ``asynchronous_commit``, on PostgreSQL and outside a transaction block, the
    statement commits without waiting for its WAL record to reach disk
    (``synchronous_commit`` off for this one statement's own transaction). That halves the
    database's work and the wait. A database crash can lose such updates from its last
    moments (up to three times ``wal_writer_delay``, 0.6 s by default), never leave a row
    half-changed. Use it only for values that are rewritten all the time, such as
    heartbeats. Inside a transaction block it is ignored, so it never changes how the
    caller's transaction commits.
    """
    alias = using or router.db_for_write(model)
    asynchronous = (
        asynchronous_commit
        and connections[alias].vendor == "postgresql"
        and not connections[alias].in_atomic_block
    )
    connection, sql, params = _update(model, where, changes, alias, asynchronous=asynchronous)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


def update_and_log(
    model: type[Model],
    where: Mapping[str, Any],
    changes: Mapping[str, Any],
    log: Model,
    *,
    link: str,
    notify: str | None = None,
    using: str | None = None,
) -> int:
    """PostgreSQL: :func:`update_rows`, plus a ``log`` row for each changed row, in one statement.

    ``log`` is an unsaved instance whose foreign key ``link`` points to ``model``; a copy of
    it is inserted for every row the update changed, and with ``notify`` a
    ``pg_notify(notify, '')`` is sent for it. One statement is atomic by itself: no
    transaction block, one round trip instead of five (BEGIN, UPDATE, INSERT, NOTIFY,
    COMMIT). Returns how many rows changed.
    """
    connection, update_sql, params = _update(model, where, changes, using)
    log_model = type(log)
    params += [
        field.get_db_prep_save(field.pre_save(log, True), connection)
        for field in _log_fields(log_model, link)
    ]
    if notify is not None:
        params.append(notify)
    sql = _update_and_log_sql(connection.alias, update_sql, log_model, link, notify is not None)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


@functools.lru_cache(maxsize=64)
def _update_and_log_sql(
    alias: str, update_sql: str, log_model: type[Model], link: str, notify: bool
) -> str:
    connection = connections[alias]
    quote = connection.ops.quote_name
    meta = log_model._meta
    link_field = meta.get_field(link)
    fields = _log_fields(log_model, link)
    target = quote(link_field.target_field.column)
    # Typed placeholders: in INSERT ... SELECT an untyped NULL would be taken for text.
    values = ", ".join(f"CAST(%s AS {field.db_type(connection)})" for field in fields)
    columns = ", ".join(quote(field.column) for field in [link_field, *fields])
    result = "pg_notify(%s, '')" if notify else "1"
    # Only quoted identifiers and types from the models' metadata; values are parameters.
    return (
        f"WITH changed AS ({update_sql} RETURNING {target}), "  # noqa: S608
        f"logged AS (INSERT INTO {quote(meta.db_table)} ({columns}) "
        f"SELECT changed.{target}, {values} FROM changed) "
        f"SELECT {result} FROM changed"
    )


def _log_fields(log_model: type[Model], link: str) -> list[Field]:
    """The fields ``update_and_log`` fills from the log instance: all but the link."""
    return [field for field in _insert_fields(log_model) if field.name != link]


def insert_row(instance: Model, *, using: str | None = None) -> Model:
    """``INSERT`` a new ``instance`` as ``save()`` would, in one statement; sets its key.

    Values go through each field's ``pre_save`` and preparation, as with ``save()``.
    """
    model = type(instance)
    meta = model._meta
    alias = using or router.db_for_write(model)
    connection = connections[alias]
    params = [
        field.get_db_prep_save(field.pre_save(instance, True), connection)
        for field in _insert_fields(model)
    ]
    returning = connection.features.can_return_columns_from_insert
    with connection.cursor() as cursor:
        cursor.execute(_insert_sql(alias, model, returning), params)
        if returning:
            pk = cursor.fetchone()[0]
        else:
            pk = connection.ops.last_insert_id(cursor, meta.db_table, meta.pk.column)
    if meta.auto_field is not None:
        setattr(instance, meta.pk.attname, pk)
    instance._state.adding = False
    instance._state.db = alias
    return instance


def _update(
    model: type[Model],
    where: Mapping[str, Any],
    changes: Mapping[str, Any],
    using: str | None,
    *,
    asynchronous: bool = False,
) -> tuple[Any, str, list[Any]]:
    alias = using or router.db_for_write(model)
    connection = connections[alias]
    meta = model._meta
    params = [
        _field(meta, name).get_db_prep_save(value, connection) for name, value in changes.items()
    ]
    # Each condition's shape: "=", "null", or the length of its IN list.
    shape: list[tuple[str, str | int]] = []
    for name, value in where.items():
        field = _field(meta, name)
        if value is None:
            shape.append((name, "null"))
        elif isinstance(value, (list, tuple, set, frozenset)):
            values = list(value)
            shape.append((name, len(values)))
            params += [field.get_db_prep_value(item, connection) for item in values]
        else:
            shape.append((name, "="))
            params.append(field.get_db_prep_value(value, connection))
    sql = _update_sql(alias, model, tuple(changes), tuple(shape), asynchronous)
    return connection, sql, params


def _field(meta: Any, name: str) -> Field:
    return meta.pk if name == "pk" else meta.get_field(name)


@functools.lru_cache(maxsize=256)
def _update_sql(
    alias: str,
    model: type[Model],
    columns: tuple[str, ...],
    shape: tuple[tuple[str, str | int], ...],
    asynchronous: bool = False,
) -> str:
    meta = model._meta
    quote = connections[alias].ops.quote_name

    def column(name: str) -> str:
        return quote(_field(meta, name).column)

    conditions = []
    for name, kind in shape:
        if kind == "=":
            conditions.append(f"{column(name)} = %s")
        elif kind == "null":
            conditions.append(f"{column(name)} IS NULL")
        elif kind == 0:
            conditions.append("1 = 0")  # IN () matches nothing
        else:
            conditions.append(f"{column(name)} IN ({', '.join(['%s'] * kind)})")
    assignments = ", ".join(f"{column(name)} = %s" for name in columns)
    where = f"WHERE {' AND '.join(conditions) or '1 = 1'}"
    # Only quoted identifiers from the model's metadata; every value is a bound parameter.
    update = f"UPDATE {quote(meta.db_table)} SET {assignments}"  # noqa: S608
    if not asynchronous:
        return f"{update} {where}"
    # set_config(..., true) lasts until the end of the statement's own transaction; the
    # CTE holds a volatile call, so PostgreSQL runs it once and never inlines it away.
    return f"{_ASYNCHRONOUS_COMMIT} {update} FROM asynchronous_commit {where}"


_ASYNCHRONOUS_COMMIT = (
    "WITH asynchronous_commit AS (SELECT set_config('synchronous_commit', 'off', true))"
)


def _insert_fields(model: type[Model]) -> list[Field]:
    meta = model._meta
    return [
        field
        for field in meta.local_concrete_fields
        if field is not meta.auto_field and not getattr(field, "generated", False)
    ]


@functools.lru_cache(maxsize=64)
def _insert_sql(alias: str, model: type[Model], returning: bool) -> str:
    meta = model._meta
    quote = connections[alias].ops.quote_name
    fields = _insert_fields(model)
    sql = (
        f"INSERT INTO {quote(meta.db_table)} "  # noqa: S608
        f"({', '.join(quote(field.column) for field in fields)}) "
        f"VALUES ({', '.join(['%s'] * len(fields))})"
    )
    if returning:
        sql += f" RETURNING {quote(meta.pk.column)}"
    return sql
