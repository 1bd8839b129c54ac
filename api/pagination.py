"""Opaque cursors: urlsafe base64 of a small JSON list."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute

from api.db import Database
from api.errors import APIError


def _invalid_cursor() -> APIError:
    return APIError(422, "invalid_cursor", "cursor is not one this API returned")


def encode_cursor(*values: Any) -> str:
    raw = json.dumps([v.isoformat() if isinstance(v, datetime) else v for v in values])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, n: int) -> list[Any]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        values = json.loads(base64.urlsafe_b64decode(padded.encode()).decode())
        if not isinstance(values, list) or len(values) != n:
            raise ValueError("wrong shape")
        return values
    except Exception as exc:
        raise _invalid_cursor() from exc


def decode_id_cursor(cursor: str) -> int:
    (ident,) = decode_cursor(cursor, 1)
    if not isinstance(ident, int):
        raise _invalid_cursor()
    return ident


def decode_time_cursor(cursor: str) -> tuple[datetime, str]:
    created, ident = decode_cursor(cursor, 2)
    try:
        return datetime.fromisoformat(created), str(ident)
    except (TypeError, ValueError) as exc:
        raise _invalid_cursor() from exc


def newest_first_page(
    db: Database,
    query: Select,
    created_col: InstrumentedAttribute,
    id_col: InstrumentedAttribute,
    *,
    limit: int,
    cursor: str | None,
) -> tuple[list[Any], str | None]:
    """One page of `query` ordered newest first by (created, id), keyset-paginated:
    stable while rows are added, and no OFFSET scan."""
    if cursor:
        created, ident = decode_time_cursor(cursor)
        query = query.where(
            or_(created_col < created, and_(created_col == created, id_col < ident))
        )
    query = query.order_by(created_col.desc(), id_col.desc()).limit(limit + 1)
    with db.session() as session:
        rows = list(session.scalars(query))
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, encode_cursor(rows[-1].created_at, rows[-1].id)
