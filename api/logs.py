"""Structured logs: one JSON object per line, carrying the request id, job id and
tenant id of the work in hand, and URLs with any API key blanked out.

The ids live in a context variable holding a small dict: the request-id middleware
(`api.main`) sets it per request, `api.deps.get_tenant` adds the tenant, and the
worker binds the job id (`bind`) while it runs a job. A dict, not one variable per
id, because FastAPI runs dependencies and endpoints in copies of the context: a
value set in one copy is seen by the others only through a shared object."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

FIELDS = ("request_id", "job_id", "tenant_id")
_context: ContextVar[dict[str, str] | None] = ContextVar("td3_log_context", default=None)

# a key itself (`td3_...`) and the value of any key-like query parameter
_KEY = re.compile(r"td3_[A-Za-z0-9_\-]+")
_KEY_PARAM = re.compile(r"(?i)([?&](?:api_key|apikey|key|token|access_token)=)[^&\s\"]*")


@contextmanager
def bind(**ids: str) -> Iterator[dict[str, str]]:
    """Attach ids (request_id, job_id, tenant_id) to every record logged inside."""
    values = {**(_context.get() or {}), **ids}
    token = _context.set(values)
    try:
        yield values
    finally:
        _context.reset(token)


def annotate(**ids: str) -> None:
    """Add ids to the current binding (seen by every copy of this request's context)."""
    values = _context.get()
    if values is not None:
        values.update(ids)


def redact(text: str) -> str:
    """`text` with API keys and key-like query values replaced by `***`."""
    return _KEY.sub("td3_***", _KEY_PARAM.sub(r"\1***", text))


class ContextFilter(logging.Filter):
    """Copies the bound ids onto each record and blanks keys out of its arguments
    (uvicorn's access log passes the request path, query string included, as one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in (_context.get() or {}).items():
            if not hasattr(record, name):
                setattr(record, name, value)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(level: str = "info", *, json_lines: bool = True) -> None:
    """Log to stderr through the context filter (JSON lines unless `json_lines` is
    False); uvicorn's and Celery's loggers propagate here."""
    handler = logging.StreamHandler()
    handler.addFilter(ContextFilter())
    handler.setFormatter(
        JsonFormatter()
        if json_lines
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.access", "uvicorn.error", "celery"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
