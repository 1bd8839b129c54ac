"""Service settings (pydantic-settings, `TD3_` environment prefix).

With no configuration at all the service runs "embedded": a SQLite database and
kombu's serverless `filesystem://` broker, both inside the state directory
(`$TD3_HOME`, else `~/.td3`). Production sets `TD3_DATABASE_URL`
(postgresql+psycopg://...) and `TD3_BROKER_URL` (redis://...); the code paths
are the same.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from td3core.config import DEFAULT_TORCH_THREADS


def default_home() -> Path:
    return Path("~/.td3").expanduser()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TD3_", extra="ignore")

    home: Path = Field(default_factory=default_home, description="state directory")
    database_url: str = Field("", description="SQLAlchemy URL; default: SQLite in home")
    broker_url: str = Field("", description="Celery broker URL; default: filesystem:// in home")

    max_upload_bytes: int = Field(200 * 1024 * 1024, ge=1, description="upload size limit")
    # Limits on what an upload holds once decompressed, checked while it streams in and
    # again while it is parsed (td3core.data.limits): a 2 MB gzip can hold 2 GiB.
    max_decompressed_bytes: int = Field(
        2 * 1024**3, ge=1, description="size limit of an upload once decompressed"
    )
    max_rows: int = Field(50_000_000, ge=1, description="rows (interactions) of an upload")
    max_line_bytes: int = Field(1024 * 1024, ge=16, description="length limit of one line")
    max_distinct_ids: int = Field(
        20_000_000, ge=1, description="distinct user plus item ids of an upload"
    )
    inline_parse_bytes: int = Field(
        8 * 1024 * 1024,
        ge=0,
        description="uploads up to this size (decompressed) are parsed in the request; "
        "larger ones by a worker (the dataset is `processing` until then)",
    )
    max_attempts: int = Field(3, ge=1, le=100, description="deliveries before worker_lost")
    checkpoint_every: int = Field(1, ge=1, description="outer steps between checkpoints")
    gpu_queue: str = Field("gpu", min_length=1, description="queue of distillation tasks")
    default_queue: str = Field("default", min_length=1, description="queue of short tasks")
    visibility_timeout: int = Field(
        48 * 3600,
        ge=60,
        description="Redis: seconds before an unacked task is redelivered; "
        "must exceed the longest job",
    )
    lease_seconds: float = Field(
        30,
        gt=0,
        description="a worker or job runner whose heartbeat is older than this is dead: its "
        "jobs are requeued and /readyz stops counting it (on the same machine a dead "
        "runner's pid is noticed sooner)",
    )
    heartbeat_interval: float = Field(
        5, gt=0, description="seconds between heartbeats of workers and job runners"
    )
    sweep_interval: float = Field(
        10, gt=0, description="seconds between each worker's sweeps for orphaned jobs"
    )
    readiness_workers: int = Field(
        1, ge=0, description="live workers /readyz needs (0: the API is ready without any)"
    )
    fair_scheduling: bool = Field(
        True,
        description="a delivered job yields its turn to the queued job of the tenant with "
        "the fewest running jobs (least recently served first)",
    )
    job_time_limit: float = Field(
        24 * 3600,
        ge=0,
        description="seconds since a job first started before it fails with `timeout` (0: none)",
    )
    max_body_bytes: int = Field(
        1024 * 1024, ge=1024, description="size limit of a JSON request body (uploads: above)"
    )
    tenant_max_active_jobs: int = Field(
        20, ge=0, description="queued + running jobs per tenant (0: no limit)"
    )
    tenant_max_stored_bytes: int = Field(
        10 * 1024**3,
        ge=0,
        description="bytes of datasets, summaries and checkpoints per tenant (0: no limit)",
    )
    job_max_compute: float = Field(
        1e6, ge=0, description="compute units (td3core.cost) one job may need (0: no limit)"
    )
    tenant_max_compute: float = Field(
        1e7,
        ge=0,
        description="compute units of a tenant's queued, running and succeeded jobs (0: no limit)",
    )
    metrics_token: str = Field(
        "", description="if set, /metrics needs `Authorization: Bearer <token>`"
    )
    webhook_max_attempts: int = Field(
        8, ge=1, le=50, description="deliveries of a job's webhook before it is marked failed"
    )
    webhook_backoff: float = Field(
        2.0,
        gt=0,
        description="seconds before a webhook's first retry; doubled each retry, capped at 1 h",
    )
    webhook_timeout: float = Field(10.0, gt=0, description="seconds one webhook POST may take")
    max_export_bytes: int = Field(
        512 * 1024 * 1024, ge=1, description="size limit of a dense (npy) summary export"
    )
    device: str = Field("", description="torch device; default cuda if available")
    torch_threads: int = Field(
        DEFAULT_TORCH_THREADS, ge=1, le=1024, description="torch intra-op threads of a job"
    )
    polling_interval: float = Field(0.2, gt=0, description="serverless broker polling interval")
    progress_interval: float = Field(1.0, ge=0, description="min seconds between progress events")

    @model_validator(mode="after")
    def _defaults(self) -> Settings:
        self.home = Path(self.home).expanduser()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.home / 'td3.db'}"
        if not self.broker_url:
            self.broker_url = "filesystem://"
        return self

    @property
    def broker_is_filesystem(self) -> bool:
        return self.broker_url.startswith("filesystem://")

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def broker_folder(self) -> Path:
        return self.home / "broker"

    def ensure_dirs(self) -> None:
        """The state directory and the broker folders, private to this user (mode 700:
        they hold every tenant's data), and the embedded database file (600)."""
        if self.is_sqlite or self.broker_is_filesystem:
            _private_dir(self.home)
        if self.broker_is_filesystem:
            _private_dir(self.broker_folder)
            for sub in ("queue", "processed", "control"):
                _private_dir(self.broker_folder / sub)
        if self.database_url == f"sqlite:///{self.home / 'td3.db'}":
            # created here, 600, before SQLite does (its -wal and -shm files copy the mode)
            database = self.home / "td3.db"
            os.close(os.open(database, os.O_CREAT | os.O_WRONLY, 0o600))
            database.chmod(0o600)

    def child_env(self) -> dict[str, str]:
        """Environment that makes a child process (worker, server) see these settings:
        every field as `TD3_<NAME>`, so a new setting travels without being listed here."""
        prefix = self.model_config.get("env_prefix", "")
        return {
            f"{prefix}{name}".upper(): str(getattr(self, name)) for name in type(self).model_fields
        }


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)  # mkdir's mode is masked by the umask and ignored for existing folders


def private_umask() -> None:
    """Files this process creates from now on are readable by its user only (the
    SQLite database, its journal, the broker's message files)."""
    os.umask(0o077)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
