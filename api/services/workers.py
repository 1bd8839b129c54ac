"""Worker heartbeats: every worker node's main process rewrites its row every
`HEARTBEAT_INTERVAL` seconds, wherever it runs, so the API (`/readyz`, `/metrics`)
knows how many workers are alive without reaching them."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, delete, func, select, update

from api.db import Database
from api.models import Worker, utcnow


def beat(db: Database, name: str, *, host: str, pid: int) -> None:
    """Record that worker `name` is alive now (its row is created on its first beat)."""
    now = utcnow()
    with db.transaction() as session:
        updated = session.execute(
            update(Worker)
            .where(Worker.name == name)
            .values(host=host, pid=pid, heartbeat_at=now)
            .returning(Worker.name)
        ).first()
        if updated is None:
            session.add(Worker(name=name, host=host, pid=pid, started_at=now, heartbeat_at=now))


def gone(db: Database, name: str) -> None:
    """A worker shutting down removes its row (a killed one just stops beating)."""
    with db.transaction() as session:
        session.execute(delete(Worker).where(Worker.name == name))


def prune(db: Database, *, older_than: float) -> int:
    """Forget workers silent for `older_than` seconds (killed ones never deregister);
    returns how many."""
    since = utcnow() - timedelta(seconds=older_than)
    with db.transaction() as session:
        result = session.execute(delete(Worker).where(Worker.heartbeat_at < since))
        return cast(CursorResult[Any], result).rowcount


def live_count(db: Database, *, lease_seconds: float) -> int:
    """Workers whose last heartbeat is younger than `lease_seconds`."""
    since = utcnow() - timedelta(seconds=lease_seconds)
    with db.session() as session:
        return int(session.scalar(select(func.count()).where(Worker.heartbeat_at >= since)) or 0)
