"""A typed Python client of the td3 HTTP service (sync, httpx).

    from td3.client import Client

    with Client("http://td3.internal:8000", api_key) as td3:
        ds = td3.upload("interactions.csv", labels={"pipeline_run": run_id})
        job = td3.create_job(ds.id, {"users": 50, "length": 20, "preset": "smoke"})
        job = td3.wait(job.id, timeout=3600, progress=True)
        td3.download_summary(job.id, "summary.safetensors")
        print(td3.report(job.id).evaluation["summary"])

Errors are `TD3Error`s carrying the server's `code` and `message`, one subclass per
status a pipeline reacts to differently. The client imports no server code but the
stdlib-only webhook verifier (`verify_webhook`), so it needs neither SQLAlchemy nor
Celery."""

from __future__ import annotations

import hashlib
import os
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, Field

from api.signing import InvalidSignature
from api.signing import verify as verify_webhook

__all__ = [
    "AuthError",
    "ChecksumMismatch",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "Dataset",
    "Event",
    "InvalidSignature",
    "Job",
    "NotFound",
    "Page",
    "PayloadTooLarge",
    "PermissionDenied",
    "Report",
    "TD3Error",
    "TooManyRequests",
    "Unavailable",
    "ValidationFailed",
    "WaitTimeout",
    "verify_webhook",
]

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
CHUNK = 1024 * 1024


# --- errors ------------------------------------------------------------------------------


class TD3Error(Exception):
    """The service answered an error (or could not be reached): `status` (0 when no
    HTTP answer), the server's `code` and `message`, and `details` when it sent some."""

    def __init__(self, status: int, code: str, message: str, details: Any = None):
        super().__init__(f"{status} {code}: {message}" if status else f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details


class AuthError(TD3Error):
    """401: the API key is missing, wrong, revoked or expired."""


class PermissionDenied(TD3Error):
    """403: the key may not do this (e.g. a read-only key)."""


class NotFound(TD3Error):
    """404: no such dataset or job for this tenant."""


class Conflict(TD3Error):
    """409: not in this state (a job that has not succeeded, a dataset in use, a
    request with this Idempotency-Key still in flight)."""


class PayloadTooLarge(TD3Error):
    """413: the upload (or a dense export) is over the server's limit."""


class ValidationFailed(TD3Error):
    """422: invalid parameters, config or data; `message` says which and where."""


class TooManyRequests(TD3Error):
    """429: over a quota or rate limit."""


class Unavailable(TD3Error):
    """503: a backing service (queue, database) is down; nothing was changed."""


class ConnectionFailed(TD3Error):
    """No HTTP answer at all (refused, timed out, DNS)."""


class ChecksumMismatch(TD3Error):
    """A download's sha256 differs from the `X-Content-SHA256` header (nothing written)."""


class WaitTimeout(TD3Error):
    """`wait` or `wait_dataset` ran out of time; `job` is the last state seen (a `Job`
    or a `Dataset`)."""

    def __init__(self, job: Job | Dataset, timeout: float):
        super().__init__(0, "wait_timeout", f"{job.id} still {job.status} after {timeout:g} s")
        self.job = job


_BY_STATUS: dict[int, type[TD3Error]] = {
    401: AuthError,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    415: ValidationFailed,
    422: ValidationFailed,
    429: TooManyRequests,
    503: Unavailable,
}


def error_from_response(response: httpx.Response) -> TD3Error:
    """The `TD3Error` subclass for an error response, with the envelope's code and
    message (a body that is not the envelope, e.g. from a proxy, becomes the message)."""
    code, message, details = f"http_{response.status_code}", response.text[:500], None
    try:
        error = response.json()["error"]
        code, message, details = str(error["code"]), str(error["message"]), error.get("details")
    except (ValueError, KeyError, TypeError):
        pass
    cls = _BY_STATUS.get(response.status_code, TD3Error)
    return cls(response.status_code, code, message, details)


# --- results -----------------------------------------------------------------------------


class _Model(BaseModel):
    # fields a newer server adds are kept, not refused
    model_config = ConfigDict(extra="allow")


class JobError(_Model):
    code: str
    message: str


class Dataset(_Model):
    id: str
    name: str
    filename: str
    format: str
    size_bytes: int
    sha256: str
    preprocessing: dict[str, Any]
    statistics: dict[str, float] | None = Field(None, description="None until ready")
    created_at: str | None
    labels: dict[str, str] = {}
    status: str = Field("ready", description="processing (a worker parses it), ready, failed")
    error: JobError | None = None


class Progress(_Model):
    stage: str | None = None
    epoch: int | None = None
    step: int | None = None
    total: int | None = None
    losses: dict[str, float] = {}
    eta_seconds: float | None = None
    message: str | None = None


class Webhook(_Model):
    url: str
    status: str
    attempts: int
    last_error: str | None = None
    delivered_at: str | None = None


class Job(_Model):
    id: str
    dataset_id: str | None
    status: str
    config: dict[str, Any]
    progress: Progress | None = None
    metrics: dict[str, Any] | None = None
    timings: dict[str, Any] = {}
    error: JobError | None = None
    attempts: int = 0
    cancel_requested: bool = False
    idempotency_key: str | None = None
    labels: dict[str, str] = {}
    webhook: Webhook | None = None
    webhook_secret: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL


class Event(_Model):
    id: int
    kind: str
    data: dict[str, Any]
    created_at: str | None = None


class Report(_Model):
    """`td3-report/1` (see the service's OpenAPI `Report` schema for every field)."""

    format: str
    config: dict[str, Any]
    dataset: dict[str, Any]
    split: dict[str, Any]
    teacher: dict[str, Any]
    distillation: dict[str, Any]
    evaluation: dict[str, dict[str, Any]]
    evaluation_by_learner: dict[str, dict[str, dict[str, Any]]] = {}
    timings: dict[str, Any] = {}
    peak_memory_mb: float | None = None
    device: str | None = None


T = TypeVar("T", bound=BaseModel)


class Page(_Model, Generic[T]):
    items: list[T]
    next_cursor: str | None


# --- the client --------------------------------------------------------------------------

EventCallback = Callable[[Event], None]


class Client:
    """One API key against one service. Use as a context manager (or call `close`)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ):
        headers = {"User-Agent": "td3-client/1"}
        if api_key:  # without one only `ready` works (a bare "Bearer " is not a valid header)
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            raise _connection_failed(exc) from exc
        if response.is_error:
            raise error_from_response(response)
        return response

    def ready(self) -> bool:
        """Whether the service answers `/readyz` with 200 (no key needed)."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    # datasets

    def upload(
        self,
        path: str | os.PathLike[str],
        *,
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
        progress: bool = False,
        wait: bool = True,
        timeout: float | None = None,
        poll: float = 1.0,
        **options: str | int | float | bool,
    ) -> Dataset:
        """Upload an interaction file, streamed (never read whole into memory).
        `options` are the upload's query parameters (`format`, `kcore`, `min_user`,
        `dedup`, `user_col`, ...); `progress` shows a tqdm bar. A large upload is parsed
        by a worker: with `wait` this returns once it is ready (`ValidationFailed` if
        its data is refused; `WaitTimeout` after `timeout` s), else at once with
        `status == "processing"` (see `wait_dataset`)."""
        path = Path(path)
        size = path.stat().st_size
        params: list[tuple[str, str | int | float | bool]] = [("filename", path.name)]
        if name:
            params.append(("name", name))
        params += list(options.items())
        params += _label_params(labels)
        with path.open("rb") as f, _bar(progress, size, f"upload {path.name}") as bar:

            def chunks() -> Iterator[bytes]:
                while chunk := f.read(CHUNK):
                    bar(len(chunk))
                    yield chunk

            response = self._request(
                "POST",
                "/v1/datasets",
                params=params,
                content=chunks(),
                headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
            )
        dataset = Dataset.model_validate(response.json())
        if wait and dataset.status == "processing":
            return self.wait_dataset(dataset.id, timeout=timeout, poll=poll)
        return dataset

    def wait_dataset(
        self, dataset_id: str, *, timeout: float | None = None, poll: float = 1.0
    ) -> Dataset:
        """Poll a dataset a worker is parsing until it is ready; `ValidationFailed`
        (with the parser's code and message) if it failed, `WaitTimeout` after
        `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            dataset = self.dataset(dataset_id)
            if dataset.status == "failed":
                error = dataset.error or JobError(code="invalid_data", message="parsing failed")
                raise ValidationFailed(422, error.code, f"{dataset.filename}: {error.message}")
            if dataset.status != "processing":
                return dataset
            if deadline is not None and time.monotonic() > deadline:
                raise WaitTimeout(dataset, timeout or 0.0)
            time.sleep(poll)

    def dataset(self, dataset_id: str) -> Dataset:
        return Dataset.model_validate(self._request("GET", f"/v1/datasets/{dataset_id}").json())

    def datasets(
        self,
        *,
        labels: Mapping[str, str] | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[Dataset]:
        """One page, newest first; only datasets with every one of `labels`."""
        params = [("limit", limit), *_label_params(labels)]
        if cursor:
            params.append(("cursor", cursor))
        return Page[Dataset].model_validate(
            self._request("GET", "/v1/datasets", params=params).json()
        )

    def delete_dataset(self, dataset_id: str) -> None:
        self._request("DELETE", f"/v1/datasets/{dataset_id}")

    # jobs

    def create_job(
        self,
        dataset_id: str,
        config: Mapping[str, Any],
        *,
        labels: Mapping[str, str] | None = None,
        webhook_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Queue a job. An `Idempotency-Key` is generated unless given: pass your own
        (e.g. the pipeline's run id) to make a retried call return the same job."""
        body: dict[str, Any] = {"dataset_id": dataset_id, "config": dict(config)}
        if labels:
            body["labels"] = dict(labels)
        if webhook_url:
            body["webhook_url"] = webhook_url
        key = idempotency_key or secrets.token_hex(16)
        response = self._request("POST", "/v1/jobs", json=body, headers={"Idempotency-Key": key})
        return Job.model_validate(response.json())

    def job(self, job_id: str) -> Job:
        return Job.model_validate(self._request("GET", f"/v1/jobs/{job_id}").json())

    def jobs(
        self,
        *,
        status: str | None = None,
        dataset_id: str | None = None,
        labels: Mapping[str, str] | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[Job]:
        """One page, newest first, filtered by status, dataset and labels (all of them)."""
        params: list[tuple[str, str | int]] = [("limit", limit), *_label_params(labels)]
        for key, value in (("status", status), ("dataset_id", dataset_id), ("cursor", cursor)):
            if value:
                params.append((key, value))
        return Page[Job].model_validate(self._request("GET", "/v1/jobs", params=params).json())

    def events(self, job_id: str, *, cursor: str | None = None, limit: int = 200) -> Page[Event]:
        """Events after `cursor`, oldest first; `next_cursor` is the cursor to poll with."""
        params: dict[str, str | int] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        return Page[Event].model_validate(
            self._request("GET", f"/v1/jobs/{job_id}/events", params=params).json()
        )

    def cancel(self, job_id: str) -> Job:
        return Job.model_validate(self._request("POST", f"/v1/jobs/{job_id}/cancel").json())

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        poll: float = 1.0,
        on_event: EventCallback | None = None,
        progress: bool = False,
    ) -> Job:
        """Follow the job's event log until it ends; returns the final job (whatever its
        status: check `job.status`). Every event is passed to `on_event` once, in order,
        however fast the job runs between polls; `progress` shows a tqdm bar. Raises
        `WaitTimeout` after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        cursor: str | None = None
        finished: Job | None = None
        with _StageBar(progress) as bar:
            while True:
                page = self.events(job_id, cursor=cursor)
                for event in page.items:
                    bar.show(event)
                    if on_event is not None:
                        on_event(event)
                cursor = page.next_cursor or cursor
                if page.items:
                    continue  # drain the log before looking at the status
                if finished is not None:  # drained up to and past the terminal status
                    return finished
                job = self.job(job_id)
                if job.finished:
                    finished = job
                    continue
                if deadline is not None and time.monotonic() > deadline:
                    raise WaitTimeout(job, timeout or 0.0)
                time.sleep(poll)

    def download_summary(
        self,
        job_id: str,
        path: str | os.PathLike[str],
        *,
        format: Literal["safetensors", "inter", "npy"] = "safetensors",
        seed: int | None = None,
    ) -> Path:
        """Stream the summary to `path`, checking its sha256 against the server's
        `X-Content-SHA256`; written atomically (a temporary file renamed into place),
        so `path` never holds a partial or corrupt file."""
        path = Path(path)
        params: dict[str, str | int] = {"format": format}
        if seed is not None:
            params["seed"] = seed
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        tmp = Path(tmp_name)
        try:
            digest = hashlib.sha256()
            with (
                os.fdopen(fd, "wb") as out,
                self._stream("GET", f"/v1/jobs/{job_id}/summary", params=params) as response,
            ):
                expected = response.headers.get("x-content-sha256")
                for chunk in response.iter_bytes(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
            if expected is None or digest.hexdigest() != expected.lower():
                raise ChecksumMismatch(
                    200,
                    "checksum_mismatch",
                    f"downloaded sha256 {digest.hexdigest()} != X-Content-SHA256 {expected}",
                )
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @contextmanager
    def _stream(self, method: str, url: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """A streamed response; an error status raises the mapped `TD3Error`."""
        try:
            with self._http.stream(method, url, **kwargs) as response:
                if response.is_error:
                    response.read()
                    raise error_from_response(response)
                yield response
        except httpx.TransportError as exc:
            raise _connection_failed(exc) from exc

    def report(self, job_id: str) -> Report:
        return Report.model_validate(self._request("GET", f"/v1/jobs/{job_id}/report").json())

    def report_html(self, job_id: str) -> str:
        return self._request("GET", f"/v1/jobs/{job_id}/report", params={"format": "html"}).text


def _connection_failed(exc: httpx.TransportError) -> ConnectionFailed:
    return ConnectionFailed(0, "connection_failed", f"{type(exc).__name__}: {exc}")


def _label_params(labels: Mapping[str, str] | None) -> list[tuple[str, str]]:
    return [("label", f"{key}:{value}") for key, value in (labels or {}).items()]


@contextmanager
def _bar(enabled: bool, total: int, desc: str) -> Iterator[Callable[[int], object]]:
    """A byte-count tqdm bar's `update` when asked for, else a no-op."""
    if not enabled:
        yield lambda n: None
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit="B", unit_scale=True) as bar:
        yield bar.update


class _StageBar:
    """`wait`'s bar: one tqdm bar per stage (teacher, distill, evaluate), advanced by
    the progress events' step/total; status changes are written above it."""

    def __init__(self, enabled: bool):
        self._enabled = enabled
        self._tqdm: Any = None
        self._stage: str | None = None

    def __enter__(self) -> _StageBar:
        return self

    def show(self, event: Event) -> None:
        if not self._enabled:
            return
        from tqdm import tqdm

        if event.kind == "status":
            tqdm.write(f"status: {event.data.get('status')}")
        elif event.kind == "progress":
            stage, step, total = (event.data.get(k) for k in ("stage", "step", "total"))
            if stage != self._stage or self._tqdm is None:
                self.__exit__()
                # steps arrive in jumps between polls: no rate, which would be noise
                self._tqdm = tqdm(
                    total=total or None,
                    desc=str(stage),
                    bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}]",
                )
                self._stage = stage
            if isinstance(step, int):
                self._tqdm.n = step
                self._tqdm.refresh()

    def __exit__(self, *exc: object) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None
