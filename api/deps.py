"""FastAPI dependencies as `Annotated` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.broker import Broker
from api.db import Database
from api.errors import APIError
from api.models import Tenant
from api.services import auth
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


def get_tenant(
    db: DatabaseDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Tenant:
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise APIError(
            401,
            "unauthorized",
            "missing API key: send 'Authorization: Bearer td3_...'",
            headers=challenge,
        )
    tenant = auth.authenticate(db, credentials.credentials)
    if tenant is None:
        raise APIError(401, "unauthorized", "invalid API key", headers=challenge)
    return tenant


TenantDep = Annotated[Tenant, Depends(get_tenant)]
