"""Run the Alembic migrations programmatically (`td3 admin migrate`, `td3 serve`)."""

from __future__ import annotations

from pathlib import Path

from api.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def alembic_config(url: str):
    from alembic.config import Config

    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.attributes["url"] = url
    return cfg


def upgrade(settings: Settings, revision: str = "head") -> None:
    from alembic import command

    settings.ensure_dirs()
    command.upgrade(alembic_config(settings.database_url), revision)


def current_revision(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
