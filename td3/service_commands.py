"""Service commands of the `td3` console script: serve, admin, demo.

Heavy imports (uvicorn, the app, td3core) happen inside the commands, never at
module load (and torch never in the API process)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from api.settings import Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="run the API and a Celery worker (embedded default: SQLite + "
        "filesystem broker in $TD3_HOME or ~/.td3)",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="worker processes (concurrent jobs; one per GPU)",
    )
    p.add_argument(
        "--no-worker",
        action="store_true",
        help="API only (run `celery -A worker.celery_app worker` elsewhere)",
    )
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=_serve)

    admin = subparsers.add_parser("admin", help="administer the service state")
    sub = admin.add_subparsers(dest="admin_command", required=True, metavar="ACTION")
    ck = sub.add_parser(
        "create-key",
        help="new API key for a tenant (created if new); the key is printed alone on the last line",
    )
    ck.add_argument("--tenant", required=True)
    ck.set_defaults(func=_create_key)
    mg = sub.add_parser("migrate", help="apply the database migrations")
    mg.set_defaults(func=_migrate)
    lt = sub.add_parser("list-tenants", help="tenants and their number of keys")
    lt.set_defaults(func=_list_tenants)
    rq = sub.add_parser(
        "requeue-orphans",
        help="send jobs that no live worker holds back to "
        "the queue (they resume from their checkpoints)",
    )
    rq.set_defaults(func=_requeue_orphans)

    d = subparsers.add_parser(
        "demo",
        help="start the embedded service, upload a synthetic dataset, run a small "
        "distillation job, download and verify the summary, print the report",
    )
    d.add_argument("--url", help="use a running service instead of starting one")
    d.add_argument("--key", help="API key for --url (default: create one in the local state)")
    d.add_argument("--tenant", default="demo")
    d.add_argument("--port", type=int, default=0, help="port of the embedded service")
    d.add_argument(
        "--out", help="where to write the summary (default: $TD3_HOME/<job>-summary.safetensors)"
    )
    d.add_argument("--users", type=int, default=20, help="synthetic users of the summary")
    d.add_argument("--length", type=int, default=10, help="synthetic sequence length")
    d.add_argument("--epochs", type=int, default=8)
    d.add_argument("--inner-steps", type=int, default=20)
    d.add_argument("--window", type=int, default=5)
    d.add_argument("--teacher-steps", type=int, default=200)
    d.add_argument("--learner-steps", type=int, default=60)
    d.add_argument("--data-users", type=int, default=300)
    d.add_argument("--data-items", type=int, default=80)
    d.add_argument("--data-length", type=int, default=20)
    d.add_argument("--timeout", type=float, default=600, help="seconds to wait for the job")
    d.add_argument("--start-timeout", type=float, default=90)
    d.add_argument("--poll", type=float, default=0.5)
    d.set_defaults(func=_demo)


def _settings() -> Settings:
    from api.settings import Settings

    return Settings()


def _logging(level: str = "info") -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def _serve(args: argparse.Namespace) -> int:
    from td3.serve import serve

    _logging(args.log_level)
    if args.workers < 1:
        print("error: --workers must be >= 1", file=sys.stderr)
        return 2
    return serve(
        _settings(),
        host=args.host,
        port=args.port,
        workers=args.workers,
        with_worker=not args.no_worker,
        log_level=args.log_level,
    )


def _migrate(args: argparse.Namespace) -> int:
    from api import migrate

    settings = _settings()
    migrate.upgrade(settings)
    print(f"database at revision {migrate.current_revision(settings.database_url)}")
    return 0


def _create_key(args: argparse.Namespace) -> int:
    from api import migrate
    from api.db import Database
    from api.services.auth import create_key

    settings = _settings()
    migrate.upgrade(settings)
    try:
        tenant, key = create_key(Database(settings.database_url), args.tenant)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"tenant {tenant.name} ({tenant.id}); store this key now, it is not kept:")
    print(key)
    return 0


def _list_tenants(args: argparse.Namespace) -> int:
    from api import migrate
    from api.db import Database
    from api.services.auth import list_tenants

    settings = _settings()
    migrate.upgrade(settings)
    for tenant, keys in list_tenants(Database(settings.database_url)):
        print(f"{tenant.id}\t{tenant.name}\t{keys} key(s)")
    return 0


def _requeue_orphans(args: argparse.Namespace) -> int:
    from td3.serve import requeue_orphans

    ids = requeue_orphans(_settings())
    print(f"re-enqueued {len(ids)} job(s)" + (": " + ", ".join(ids) if ids else ""))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from td3.demo import run_demo

    return run_demo(args)
