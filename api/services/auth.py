"""Tenants and API keys. Keys are `td3_` + 43 random url-safe characters (256 bits);
only their sha256 is stored, so a database leak does not leak usable keys.

A key has a scope (`read-write`, or `read-only`: every write answers 403) and may
expire; `td3 admin` lists, revokes and expires keys by their id or prefix."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, get_args

from sqlalchemy import func, or_, select

from api.db import Database
from api.models import ApiKey, Tenant, new_id, utcnow

KEY_PREFIX = "td3_"
Scope = Literal["read-write", "read-only"]
SCOPES: tuple[str, ...] = get_args(Scope)


@dataclass(frozen=True)
class Caller:
    """Who is calling: the tenant and what its key may do."""

    tenant: Tenant
    scope: Scope

    @property
    def can_write(self) -> bool:
        return self.scope == "read-write"


@dataclass(frozen=True)
class KeyInfo:
    """A key as `td3 admin list-keys` shows it (never the key itself)."""

    id: str
    prefix: str
    tenant: str
    scope: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, key: ApiKey, tenant_name: str) -> KeyInfo:
        return cls(
            id=key.id,
            prefix=key.prefix,
            tenant=tenant_name,
            scope=key.scope,
            created_at=key.created_at,
            expires_at=key.expires_at,
            revoked_at=key.revoked_at,
        )

    def state(self, now: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def create_key(
    db: Database,
    tenant_name: str,
    *,
    scope: Scope = "read-write",
    expires_at: datetime | None = None,
) -> tuple[Tenant, str]:
    """A new key for the tenant (created on first use). Returns (tenant, key)."""
    tenant_name = tenant_name.strip()
    if not tenant_name or len(tenant_name) > 100:
        raise ValueError("tenant name must be 1..100 characters")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}")
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
                scope=scope,
                expires_at=expires_at,
            )
        )
    return tenant, key


def authenticate(db: Database, key: str) -> Tenant | None:
    caller = identify(db, key)
    return None if caller is None else caller.tenant


def identify(db: Database, key: str) -> Caller | None:
    """The caller behind `key`, or None for an unknown, revoked or expired key."""
    if not key.startswith(KEY_PREFIX) or len(key) > 200:
        return None
    with db.session() as session:
        row = session.execute(
            select(Tenant, ApiKey.scope)
            .join(ApiKey, ApiKey.tenant_id == Tenant.id)
            .where(
                ApiKey.key_hash == hash_key(key),
                ApiKey.revoked_at.is_(None),
                or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > utcnow()),
            )
        ).first()
    if row is None:
        return None
    tenant, scope = row
    return Caller(tenant=tenant, scope="read-only" if scope == "read-only" else "read-write")


def list_keys(db: Database, tenant_name: str | None = None) -> list[KeyInfo]:
    query = select(ApiKey, Tenant.name).join(Tenant, Tenant.id == ApiKey.tenant_id)
    if tenant_name is not None:
        query = query.where(Tenant.name == tenant_name)
    with db.session() as session:
        rows = session.execute(query.order_by(Tenant.name, ApiKey.created_at)).all()
    return [KeyInfo.of(k, name) for k, name in rows]


def revoke_key(db: Database, ident: str) -> KeyInfo:
    """Revoke the key with this id or prefix (at once; it is never valid again)."""
    return _change_key(db, ident, revoked_at=utcnow())


def expire_key(db: Database, ident: str, at: datetime) -> KeyInfo:
    """Set when the key with this id or prefix stops working (now or later)."""
    return _change_key(db, ident, expires_at=at)


def _change_key(db: Database, ident: str, **values: datetime) -> KeyInfo:
    with db.transaction() as session:
        keys = session.scalars(
            select(ApiKey).where(or_(ApiKey.id == ident, ApiKey.prefix == ident))
        ).all()
        if len(keys) != 1:
            raise LookupError(
                f"no key {ident!r}"
                if not keys
                else f"{ident!r} matches {len(keys)} keys; use its id"
            )
        key = keys[0]
        for name, value in values.items():
            if name != "revoked_at" or key.revoked_at is None:  # keep the first revocation
                setattr(key, name, value)
        return KeyInfo.of(key, session.get_one(Tenant, key.tenant_id).name)


def list_tenants(db: Database) -> list[tuple[Tenant, int]]:
    with db.session() as session:
        rows = session.execute(
            select(Tenant, func.count(ApiKey.id))
            .outerjoin(ApiKey, ApiKey.tenant_id == Tenant.id)
            .group_by(Tenant.id)
            .order_by(Tenant.name)
        ).all()
        return [(t, n) for t, n in rows]
