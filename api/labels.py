"""Labels: free-form `key: value` strings a client attaches to a dataset or a job (a
pipeline's run id, a team, an experiment) and filters listings by
(`?label=key:value`, repeatable, all must match)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query
from pydantic import Field, StringConstraints
from sqlalchemy import Select
from sqlalchemy.orm import InstrumentedAttribute

from api.errors import APIError

MAX_LABELS = 16
# Keys are identifiers (they become JSON paths in the filter's SQL); values are any
# text without control characters.
LabelKey = Annotated[
    str, StringConstraints(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
]
LabelValue = Annotated[str, StringConstraints(max_length=256, pattern=r"^[^\x00-\x1f\x7f]*$")]
Labels = Annotated[
    dict[LabelKey, LabelValue],
    Field(
        max_length=MAX_LABELS,
        description=f"at most {MAX_LABELS} labels; keys: letters, digits and `._/-` "
        "(63 characters at most), values: 256 characters at most",
        examples=[{"pipeline_run": "run-2026-11-29-001", "team": "recs"}],
    ),
]

# `?label=key:value`, repeatable: a listing's filter (all must match)
LabelQuery = Annotated[
    list[str] | None,
    Query(
        max_length=MAX_LABELS,
        description="`key:value`; repeat to require several labels (all must match)",
    ),
]


def parse_label_filters(values: list[str] | None) -> dict[str, str]:
    """`["team:recs", "run:7"]` -> `{"team": "recs", "run": "7"}` (422 when malformed)."""
    from pydantic import TypeAdapter, ValidationError

    wanted: dict[str, str] = {}
    for raw in values or []:
        key, sep, value = raw.partition(":")
        if not sep:
            raise APIError(422, "validation_error", f"label filter {raw!r}: expected key:value")
        wanted[key] = value
    try:
        return TypeAdapter(Labels).validate_python(wanted)
    except ValidationError as exc:
        raise APIError(422, "validation_error", f"label filter: {exc.errors()[0]['msg']}") from exc


def with_labels(
    query: Select[Any], column: InstrumentedAttribute[Any], labels: dict[str, str]
) -> Select[Any]:
    """Keep the rows whose labels include every `key: value` of `labels`."""
    for key, value in labels.items():
        query = query.where(column[key].as_string() == value)
    return query
