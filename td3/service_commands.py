"""Service commands of the `td3` console script: serve, admin, demo.

Heavy imports (uvicorn, the app, td3core) happen inside the commands, never at
module load (and torch never in the API process)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from api.db import Database
    from api.services.auth import KeyInfo
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
        help="worker processes, each running one job at a time; on a multi-GPU host "
        "worker i sees GPU i only (CUDA_VISIBLE_DEVICES)",
    )
    p.add_argument(
        "--no-worker",
        action="store_true",
        help="API only (run `celery -A worker.celery_app worker` elsewhere)",
    )
    p.add_argument("--log-level", default="info")
    p.add_argument(
        "--log-format",
        choices=("json", "text"),
        default="json",
        help="json: one object per line with request, job and tenant ids",
    )
    p.set_defaults(func=_serve)

    admin = subparsers.add_parser("admin", help="administer the service state")
    sub = admin.add_subparsers(dest="admin_command", required=True, metavar="ACTION")
    ck = sub.add_parser(
        "create-key",
        help="new API key for a tenant (created if new); the key is printed alone on the last line",
    )
    ck.add_argument("--tenant", required=True)
    ck.add_argument(
        "--scope",
        choices=("read-write", "read-only"),
        default="read-write",
        help="read-only keys get 403 on every write",
    )
    ck.add_argument("--expires-in", type=_duration, metavar="DURATION", help="e.g. 90d, 12h, 30m")
    ck.set_defaults(func=_create_key)
    lk = sub.add_parser("list-keys", help="keys (id, prefix, tenant, scope, state), never the keys")
    lk.add_argument("--tenant", help="only this tenant's keys")
    lk.set_defaults(func=_list_keys)
    rk = sub.add_parser("revoke-key", help="revoke a key at once, by its id or prefix")
    rk.add_argument("key", metavar="ID_OR_PREFIX")
    rk.set_defaults(func=_revoke_key)
    ek = sub.add_parser("expire-key", help="make a key stop working now or after a while")
    ek.add_argument("key", metavar="ID_OR_PREFIX")
    ek.add_argument("--in", dest="expires_in", type=_duration, default=timedelta(0))
    ek.set_defaults(func=_expire_key)
    es = sub.add_parser(
        "estimate",
        help="the compute units a job config needs on a dataset of this size (what the "
        "compute quotas count; see docs/SERVICE.md)",
    )
    es.add_argument("config", help="the job config as JSON (the API's flat `config` object)")
    es.add_argument("--items", type=int, required=True)
    es.add_argument("--interactions", type=int, required=True)
    es.set_defaults(func=_estimate)
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
        "distillation job, download and verify the summary, write the report to files "
        "and print the comparison table",
    )
    d.add_argument("--url", help="use a running service instead of starting one")
    d.add_argument("--key", help="API key for --url (default: create one in the local state)")
    d.add_argument("--tenant", default="demo")
    d.add_argument("--port", type=int, default=0, help="port of the embedded service")
    d.add_argument(
        "--out", help="where to write the summary (default: $TD3_HOME/<job>-summary.safetensors)"
    )
    # Defaults: a case where the summary beats real samples of its budget (README,
    # Quickstart): many items, a strong item-to-item cycle, a 20 x 10 budget.
    d.add_argument("--users", type=int, default=20, help="synthetic users of the summary")
    d.add_argument("--length", type=int, default=10, help="synthetic sequence length")
    d.add_argument("--epochs", type=int, default=8)
    d.add_argument("--inner-steps", type=int, default=20)
    d.add_argument("--window", type=int, default=5)
    d.add_argument("--temperature", type=float, default=0.3, help="the summary's softmax")
    d.add_argument("--teacher-steps", type=int, default=200)
    d.add_argument("--learner-steps", type=int, default=60)
    d.add_argument("--data-users", type=int, default=600)
    d.add_argument("--data-items", type=int, default=400)
    d.add_argument("--data-length", type=int, default=20)
    d.add_argument(
        "--data-follow",
        type=float,
        default=0.8,
        help="probability that a synthetic user's next item is its last item's successor",
    )
    d.add_argument("--timeout", type=float, default=600, help="seconds to wait for the job")
    d.add_argument("--start-timeout", type=float, default=90)
    d.add_argument("--poll", type=float, default=0.5)
    d.set_defaults(func=_demo)


def _settings() -> Settings:
    """The settings; files this command creates in $TD3_HOME are private (600)."""
    from api.settings import Settings, private_umask

    private_umask()
    return Settings()


def _duration(text: str) -> timedelta:
    """`90d`, `12h`, `30m`, `45s` -> a timedelta (for argparse)."""
    units = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}
    text = text.strip().lower()
    if len(text) < 2 or text[-1] not in units or not text[:-1].isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: use a whole number and d, h, m or s (90d)")
    return timedelta(**{units[text[-1]]: int(text[:-1])})


def _serve(args: argparse.Namespace) -> int:
    from api.logs import configure
    from td3.serve import serve

    configure(args.log_level, json_lines=args.log_format == "json")
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
    from api.models import utcnow
    from api.services.auth import create_key

    expires_at = utcnow() + args.expires_in if args.expires_in else None
    try:
        tenant, key = create_key(
            _migrated_db(), args.tenant, scope=args.scope, expires_at=expires_at
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"tenant {tenant.name} ({tenant.id}); store this key now, it is not kept:")
    print(key)
    return 0


def _list_tenants(args: argparse.Namespace) -> int:
    from api.services.auth import list_tenants

    for tenant, keys in list_tenants(_migrated_db()):
        print(f"{tenant.id}\t{tenant.name}\t{keys} key(s)")
    return 0


def _list_keys(args: argparse.Namespace) -> int:
    from api.models import utcnow
    from api.services.auth import list_keys

    now = utcnow()
    print("id\tprefix\ttenant\tscope\tstate\tcreated\texpires")
    for k in list_keys(_migrated_db(), args.tenant):
        expires = k.expires_at.isoformat(timespec="seconds") if k.expires_at else "-"
        created = k.created_at.isoformat(timespec="seconds")
        print(f"{k.id}\t{k.prefix}\t{k.tenant}\t{k.scope}\t{k.state(now)}\t{created}\t{expires}")
    return 0


def _revoke_key(args: argparse.Namespace) -> int:
    from api.services.auth import revoke_key

    return _report_key_change(lambda db: revoke_key(db, args.key))


def _expire_key(args: argparse.Namespace) -> int:
    from api.models import utcnow
    from api.services.auth import expire_key

    return _report_key_change(lambda db: expire_key(db, args.key, utcnow() + args.expires_in))


def _report_key_change(change: Callable[[Database], KeyInfo]) -> int:
    from api.models import utcnow

    try:
        key = change(_migrated_db())
    except LookupError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2
    expires = key.expires_at.isoformat(timespec="seconds") if key.expires_at else "never"
    print(
        f"key {key.id} ({key.prefix}..., tenant {key.tenant}): {key.state(utcnow())}, "
        f"expires {expires}"
    )
    return 0


def _migrated_db() -> Database:
    from api import migrate
    from api.db import Database

    settings = _settings()
    migrate.upgrade(settings)
    return Database(settings.database_url)


def _estimate(args: argparse.Namespace) -> int:
    import json

    from api.errors import APIError
    from api.schemas import build_job_config
    from td3core.cost import estimate_compute

    try:
        config = build_job_config(json.loads(args.config))
    except (ValueError, APIError) as exc:
        print(f"error: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 2
    units = estimate_compute(config, items=args.items, interactions=args.interactions)
    print(f"{units:.6g} compute units (billions of item scores)")
    return 0


def _requeue_orphans(args: argparse.Namespace) -> int:
    from td3.serve import requeue_orphans

    ids = requeue_orphans(_settings())
    print(f"re-enqueued {len(ids)} job(s)" + (": " + ", ".join(ids) if ids else ""))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from td3.demo import run_demo

    return run_demo(args)
