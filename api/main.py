"""The FastAPI app. `create_app(settings)` builds it; uvicorn serves it
(`td3 serve`, or `uvicorn --factory api.main:create_app`)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from sqlalchemy.exc import OperationalError

from api.broker import Broker
from api.db import Database
from api.deps import storage_quota
from api.errors import error_body, install_error_handlers
from api.metrics import CountRequests, Metrics
from api.middleware import BodyLimit, RequestId
from api.routes import datasets, health, jobs
from api.settings import Settings

log = logging.getLogger("td3.api")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info(
            "td3 api: database %s, broker %s",
            _redact(settings.database_url),
            _redact(settings.broker_url),
        )
        yield
        app.state.broker.close()
        app.state.db.dispose()

    app = FastAPI(
        title="td3",
        # 1.1: preset "default" (used when omitted), teacher_search; 1.2: distill.inner_objective;
        # 1.3: distill.init and init_confidence, a real start by default;
        # 1.4: distill.init_rows, the longest users' rows by default;
        # 1.5: distill.real_chunk
        version="1.5",
        summary="TD3 dataset distillation for sequential recommendation, as a service",
        lifespan=lifespan,
        generate_unique_id_function=operation_id,
    )
    app.state.settings = settings
    app.state.db = Database(settings.database_url)
    app.state.broker = Broker(settings)
    app.state.metrics = Metrics(app.state.db, lease_seconds=settings.lease_seconds)
    # outermost last: the request id wraps everything, uploads keep their own limit
    app.add_middleware(
        BodyLimit,
        limit=settings.max_body_bytes,
        exempt=frozenset({("POST", "/v1/datasets")}),
    )
    app.add_middleware(CountRequests, metrics=app.state.metrics)
    app.add_middleware(RequestId)
    install_error_handlers(app)
    app.add_exception_handler(OperationalError, _database_unavailable)
    app.include_router(health.router)
    app.include_router(datasets.router, dependencies=[Depends(storage_quota)])
    app.include_router(jobs.router)
    _declare_validation_errors(app)
    return app


def operation_id(route: APIRoute) -> str:
    """The route function's name (`upload_dataset`, `create_job`, ...): what generated
    clients call their methods."""
    return route.name


async def _database_unavailable(_request: Request, exc: Exception) -> JSONResponse:
    """The database is down or restarting: 503 (retry), not 500 (a bug)."""
    log.warning("database unavailable: %s", type(exc).__name__)
    return JSONResponse(
        error_body("database_unavailable", "the database is unavailable; retry shortly"),
        status_code=503,
        headers={"Retry-After": "5"},
    )


def _declare_validation_errors(app: FastAPI) -> None:
    """Every 422 answers the error envelope (`api.errors`): the schema says so wherever
    FastAPI would document its default `{"detail": [...]}` body instead."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        fresh = app.openapi_schema is None
        spec = generate()  # FastAPI keeps it in app.openapi_schema: this runs once
        if fresh:
            envelope = {"$ref": "#/components/schemas/ErrorResponse"}
            for operations in spec["paths"].values():
                for operation in operations.values():
                    invalid = operation.get("responses", {}).get("422", {})
                    for media in invalid.get("content", {}).values():
                        media["schema"] = envelope
            for name in ("HTTPValidationError", "ValidationError"):
                spec["components"]["schemas"].pop(name, None)
        return spec

    app.openapi = openapi  # type: ignore[method-assign]


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url
