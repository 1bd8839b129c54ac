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
    device: str = Field("", description="torch device; default cuda if available")
    polling_interval: float = Field(0.2, gt=0, description="serverless broker polling interval")
    progress_interval: float = Field(1.0, ge=0, description="min seconds between progress events")
    page_limit_max: int = Field(200, ge=1)

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
        """Environment that makes a child process (worker, server) see these settings."""
        return {
            "TD3_HOME": str(self.home),
            "TD3_DATABASE_URL": self.database_url,
            "TD3_BROKER_URL": self.broker_url,
            "TD3_MAX_UPLOAD_BYTES": str(self.max_upload_bytes),
            "TD3_MAX_ATTEMPTS": str(self.max_attempts),
            "TD3_CHECKPOINT_EVERY": str(self.checkpoint_every),
            "TD3_GPU_QUEUE": self.gpu_queue,
            "TD3_DEFAULT_QUEUE": self.default_queue,
            "TD3_VISIBILITY_TIMEOUT": str(self.visibility_timeout),
            "TD3_DEVICE": self.device,
            "TD3_LEASE_SECONDS": str(self.lease_seconds),
            "TD3_POLLING_INTERVAL": str(self.polling_interval),
            "TD3_PROGRESS_INTERVAL": str(self.progress_interval),
        }


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
