"""Tenants and API keys. Keys are `td3_` + 43 random url-safe characters (256 bits);
only their sha256 is stored, so a database leak does not leak usable keys."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select

from api.db import Database
from api.models import ApiKey, Tenant, new_id, utcnow

KEY_PREFIX = "td3_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def create_key(db: Database, tenant_name: str) -> tuple[Tenant, str]:
    """A new key for the tenant (created on first use). Returns (tenant, key)."""
    tenant_name = tenant_name.strip()
    if not tenant_name or len(tenant_name) > 100:
        raise ValueError("tenant name must be 1..100 characters")
    key = generate_key()
    with db.transaction() as session:
        tenant = session.scalar(select(Tenant).where(Tenant.name == tenant_name))
        if tenant is None:
            tenant = Tenant(id=new_id("ten"), name=tenant_name, created_at=utcnow())
            session.add(tenant)
            session.flush()
        session.add(
            ApiKey(
                id=new_id("key"),
                tenant_id=tenant.id,
                prefix=key[:10],
                key_hash=hash_key(key),
                created_at=utcnow(),
            )
        )
    return tenant, key


def authenticate(db: Database, key: str) -> Tenant | None:
    if not key.startswith(KEY_PREFIX) or len(key) > 200:
        return None
    with db.session() as session:
        return session.scalar(
            select(Tenant)
            .join(ApiKey, ApiKey.tenant_id == Tenant.id)
            .where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
        )


def list_tenants(db: Database) -> list[tuple[Tenant, int]]:
    from sqlalchemy import func

    with db.session() as session:
        rows = session.execute(
            select(Tenant, func.count(ApiKey.id))
            .outerjoin(ApiKey, ApiKey.tenant_id == Tenant.id)
            .group_by(Tenant.id)
            .order_by(Tenant.name)
        ).all()
        return [(t, n) for t, n in rows]
