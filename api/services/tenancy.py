"""Tenant scoping: a tenant sees only its own datasets and jobs, and another
tenant's id answers exactly like a missing one (404), so ids reveal nothing."""

from __future__ import annotations

from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.errors import not_found
from api.models import Dataset, Job, Tenant

Owned = TypeVar("Owned", Dataset, Job)


def owned_or_404(
    session: Session, model: type[Owned], ident: str, tenant: Tenant, *, lock: bool = False
) -> Owned:
    """The tenant's row `ident` of `model` (locked FOR UPDATE if asked), else 404."""
    query = select(model).where(model.id == ident, model.tenant_id == tenant.id)
    if lock:
        query = query.with_for_update()
    row = session.scalar(query)
    if row is None:
        raise not_found(model.__name__.lower(), ident)
    return row
