"""FastAPI dependencies as `Annotated` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.broker import Broker
from api.db import Database
from api.errors import APIError
from api.logs import annotate
from api.models import Tenant
from api.services import auth
from api.services.quotas import Quotas
from api.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="an API key: `td3_...`")


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_db(request: Request) -> Database:
    return request.app.state.db


def get_broker(request: Request) -> Broker:
    return request.app.state.broker


SettingsDep = Annotated[Settings, Depends(get_settings)]
DatabaseDep = Annotated[Database, Depends(get_db)]
BrokerDep = Annotated[Broker, Depends(get_broker)]


# Methods that change nothing: a read-only key may call them.
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Query parameters a client might put a key in (any value that looks like a key counts too).
KEY_PARAMS = frozenset({"api_key", "apikey", "key", "token", "access_token"})


def get_tenant(
    request: Request,
    db: DatabaseDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Tenant:
    """The calling tenant. 401 for a missing, unknown, revoked or expired key and for
    a key sent in the URL (URLs end up in logs and histories); 403 when a read-only
    key asks for a write. (Another tenant's ids answer 404, never 403.)"""
    challenge = {"WWW-Authenticate": "Bearer"}
    if any(
        name.lower() in KEY_PARAMS or value.startswith(auth.KEY_PREFIX)
        for name, value in request.query_params.multi_items()
    ):
        raise APIError(
            401,
            "unauthorized",
            "API keys are accepted only in the 'Authorization: Bearer' header, never in "
            "the URL; a key sent in a URL should be revoked",
            headers=challenge,
        )
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise APIError(
            401,
            "unauthorized",
            "missing API key: send 'Authorization: Bearer td3_...'",
            headers=challenge,
        )
    caller = auth.identify(db, credentials.credentials)
    if caller is None:
        raise APIError(
            401, "unauthorized", "invalid, revoked or expired API key", headers=challenge
        )
    if request.method not in READ_METHODS and not caller.can_write:
        raise APIError(403, "forbidden", "this API key is read-only")
    annotate(tenant_id=caller.tenant.id)  # on the request's log records from here on
    return caller.tenant


TenantDep = Annotated[Tenant, Depends(get_tenant)]


def storage_quota(
    request: Request, tenant: TenantDep, db: DatabaseDep, settings: SettingsDep
) -> None:
    """Uploads are refused (429) once the tenant's stored bytes reach its quota (checked
    before the upload is read: one upload may overshoot by at most MAX_UPLOAD_BYTES)."""
    if request.method == "POST":
        Quotas.from_settings(settings).check_storage(db, tenant)
