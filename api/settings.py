"""Service settings (pydantic-settings, `TD3_` environment prefix).

With no configuration at all the service runs "embedded": a SQLite database and
kombu's serverless `filesystem://` broker, both inside the state directory
(`$TD3_HOME`, else `~/.td3`). Production sets `TD3_DATABASE_URL`
(postgresql+psycopg://...) and `TD3_BROKER_URL` (redis://...); the code paths
are the same.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_home() -> Path:
    return Path("~/.td3").expanduser()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TD3_", extra="ignore")

    home: Path = Field(default_factory=default_home, description="state directory")
    database_url: str = Field("", description="SQLAlchemy URL; default: SQLite in home")
    broker_url: str = Field("", description="Celery broker URL; default: filesystem:// in home")

    max_upload_bytes: int = Field(200 * 1024 * 1024, ge=1, description="upload size limit")
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
        1800,
        gt=0,
        description="a job on another machine with no progress for this long "
        "counts as abandoned (on the same machine the worker's pid is checked instead)",
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
        if self.is_sqlite or self.broker_is_filesystem:
            self.home.mkdir(parents=True, exist_ok=True)
        if self.broker_is_filesystem:
            for sub in ("queue", "processed", "control"):
                (self.broker_folder / sub).mkdir(parents=True, exist_ok=True)

    def child_env(self) -> dict[str, str]:
        """Environment that makes a child process (worker, server) see these settings:
        every field as `TD3_<NAME>`, so a new setting travels without being listed here."""
        prefix = self.model_config.get("env_prefix", "")
        return {
            f"{prefix}{name}".upper(): str(getattr(self, name)) for name in type(self).model_fields
        }


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
