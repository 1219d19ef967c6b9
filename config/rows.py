"""Queries written out by hand, for the few that run on every request of a hot path (issue 14).

Building and compiling a query costs the ORM 0.5–2 ms of CPU, many times what running it costs
PostgreSQL; for the API key lookup and the conversation a message is sent to, that was most of
the CPU of a POST. ``Rows`` puts some models' columns side by side in one SELECT and makes the
models back from a row the way the ORM does (``Model.from_db``, after the backend's own
converters), so callers get the same objects as from a queryset. Names come from the models'
``_meta``; values are always query parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Field, Model

_T = TypeVar("_T")
_prepared: dict[tuple[Callable[..., Any], str], Any] = {}


def prepared(make: Callable[[BaseDatabaseWrapper], _T], connection: BaseDatabaseWrapper) -> _T:
    """``make(connection)``, made once per database alias and kept: the SQL and the converters
    depend on the backend only, and every thread's connection to it has the same settings."""
    key = (make, connection.alias)
    found = _prepared.get(key)
    if found is None:
        found = _prepared[key] = make(connection)
    return cast(_T, found)


def column(connection: BaseDatabaseWrapper, model: type[Model], name: str) -> str:
    """The quoted column of ``model``'s field ``name``."""
    return connection.ops.quote_name(cast("Field[Any, Any]", model._meta.get_field(name)).column)


def table(connection: BaseDatabaseWrapper, model: type[Model]) -> str:
    return connection.ops.quote_name(model._meta.db_table)


class Rows:
    """The columns of each (model, alias) in turn; ``load`` makes the models of a row."""

    def __init__(self, connection: BaseDatabaseWrapper, *models: tuple[type[Model], str]) -> None:
        self.parts: list[tuple[type[Model], list[str], list[list[tuple[Any, Any]]]]] = []
        columns = []
        for model, alias in models:
            fields: list[Any] = list(model._meta.concrete_fields)  # stubs: no get_db_converters
            converters = []
            for field in fields:
                col = field.get_col(alias)
                found = connection.ops.get_db_converters(col) + field.get_db_converters(connection)
                converters.append([(converter, col) for converter in found])
            self.parts.append((model, [f.attname for f in fields], converters))
            columns += [f"{alias}.{connection.ops.quote_name(f.column)}" for f in fields]
        self.columns = ", ".join(columns)
        self.width = len(columns)  # the row's further columns are the caller's

    def load(self, connection: BaseDatabaseWrapper, row: tuple[Any, ...]) -> list[Model]:
        made = []
        at = 0
        for model, names, converters in self.parts:
            values = list(row[at : at + len(names)])
            at += len(names)
            for i, pairs in enumerate(converters):
                for converter, col in pairs:
                    values[i] = converter(values[i], col, connection)
            made.append(model.from_db(connection.alias, names, values))
        return made
