"""Uploads as the API really receives them (raw body, gzip, chunked) against the real
Postgres, Redis and worker: a malformed-upload corpus, bombs refused while streaming
with bounded memory (measured on a real uvicorn process), large uploads parsed by the
worker (processing -> ready | failed, jobs 409 until ready), names cleaned, and no
temporary file left behind."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from helpers_service import TINY_CONFIG, free_port

from api.main import create_app

pytestmark = pytest.mark.integration

# Lowered limits: every bomb below is a few hundred KB expanding past them.
LIMITS = {
    "max_upload_bytes": 4 * 1024 * 1024,
    "max_decompressed_bytes": 32 * 1024 * 1024,
    "max_rows": 200_000,
    "max_line_bytes": 64 * 1024,
    "max_distinct_ids": 50_000,
    "inline_parse_bytes": 8 * 1024 * 1024,
}
HEAD = b"user_id,item_id,timestamp\n"


def packed(repeat: bytes, total: int) -> bytes:
    """gzip of `repeat` repeated to `total` bytes, built piece by piece (never whole)."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = repeat * max(1, (1 << 20) // len(repeat))
    out = [z.compress(HEAD if repeat != b"\0" else b"")]
    for _ in range(total // len(block)):
        out.append(z.compress(block))
    return b"".join(out) + z.flush()


def gzip_bomb() -> bytes:
    return packed(b"\0", 256 * 1024 * 1024)  # ~250 KB -> 256 MiB, no newline


def line_bomb() -> bytes:
    return packed(b"1,1,1\n", 256 * 1024 * 1024)  # ~400 KB -> 256 MiB, 44M rows


def size_bomb() -> bytes:
    # 1 KiB lines: under the line and row limits, refused on the decompressed size
    return packed(b"a" * 1023 + b"\n", 256 * 1024 * 1024)


def synthetic() -> bytes:
    from td3core.data.synthetic import generate_interactions, interactions_to_csv_bytes

    return interactions_to_csv_bytes(generate_interactions(60, 40, 12, 0))


@pytest.fixture(scope="module")
def bounded(settings):
    return settings.model_copy(update=LIMITS)


@pytest.fixture(scope="module")
def upload_client(bounded):
    with TestClient(create_app(bounded)) as c:
        yield c


def chunked(data: bytes, size: int = 8192) -> Iterator[bytes]:
    # a generator body: httpx sends it with Transfer-Encoding: chunked, no length
    for i in range(0, len(data), size):
        yield data[i : i + size]


def post(client, auth, data, *, via="raw", **params):
    content: bytes | Iterator[bytes] = data
    if via == "gzip":
        content = gzip.compress(data)
    elif via == "chunked":
        content = chunked(data)
    return client.post(
        "/v1/datasets",
        params={"filename": "corpus.csv", **params},
        content=content,
        headers={**auth, "Content-Type": "application/octet-stream"},
    )


CORPUS = [
    # (name, body, query params, status, error code, words in the message)
    ("empty", b"", {}, 422, "invalid_data", "empty"),
    ("binary", bytes(range(256)) * 64, {}, 422, "invalid_data", "corpus.csv"),
    (
        "wrong separator",
        HEAD.replace(b",", b";") + b"u;i;1\n",
        {"delimiter": ","},
        422,
        "invalid_data",
        "missing required column 'user_id'",
    ),
    (
        "missing column",
        b"user_id,timestamp\nu,1\n",
        {},
        422,
        "invalid_data",
        "missing required column 'item_id'",
    ),
    (
        "non-numeric",
        HEAD + b"u,i,1\nu,j,soon\n",
        {},
        422,
        "invalid_data",
        "corpus.csv:3: non-numeric timestamp 'soon'",
    ),
    (
        "non-finite",
        HEAD + b"u,i,inf\n",
        {},
        422,
        "invalid_data",
        "corpus.csv:2: non-finite timestamp 'inf'",
    ),
    ("one row", HEAD + b"u,i,1\n", {}, 422, "invalid_data", "no interactions left"),
    (
        "invalid utf-8",
        HEAD + b"u\xff\xfe,i,1\n",
        {},
        422,
        "invalid_data",
        "corpus.csv:2: undecodable bytes",
    ),
    (
        "mixed encodings",
        HEAD + "ü,i,1\n".encode() + "ü,j,2\n".encode("latin-1"),
        {},
        422,
        "invalid_data",
        "corpus.csv:3: undecodable",
    ),
    (
        "headerless without columns",
        b"1,2,3\n4,5,6\n",
        {},
        422,
        "invalid_data",
        "columns=user_id,item_id",
    ),
    (
        "bad reader option",
        HEAD + b"u,i,1\n",
        {"columns": "user_id,,timestamp", "time_format": "julian"},
        422,
        "validation_error",
        "time_format",
    ),
]


@pytest.mark.parametrize("via", ["raw", "gzip", "chunked"])
@pytest.mark.parametrize(
    ("body", "params", "status", "code", "words"),
    [case[1:] for case in CORPUS],
    ids=[case[0] for case in CORPUS],
)
def test_malformed_corpus(upload_client, auth, body, params, status, code, words, via):
    r = post(upload_client, auth, body, via=via, **params)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and words in error["message"], error
    assert upload_client.get("/healthz").status_code == 200


def test_truncated_gzip_is_422(upload_client, auth):
    data = gzip.compress(HEAD + b"u,i,1\n" * 5000)
    r = post(upload_client, auth, data[: len(data) // 2])
    assert r.status_code == 422 and "corrupt gzip" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("make", "setting"),
    [
        (gzip_bomb, "TD3_MAX_LINE_BYTES"),
        (line_bomb, "TD3_MAX_ROWS"),
        (size_bomb, "TD3_MAX_DECOMPRESSED_BYTES"),
    ],
)
def test_bombs_are_refused_while_streaming(upload_client, auth, make, setting):
    bomb = make()
    assert len(bomb) < LIMITS["max_upload_bytes"]
    start = time.monotonic()
    r = post(upload_client, auth, bomb, via="chunked")
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "payload_too_large"
    assert setting in r.json()["error"]["message"]
    assert time.monotonic() - start < 30
    assert upload_client.get("/healthz").status_code == 200


def test_distinct_ids_limit_is_413(upload_client, auth):
    rows = HEAD + b"".join(b"u%d,i%d,%d\n" % (i, i, i) for i in range(30_000))
    r = post(upload_client, auth, rows, via="gzip")
    assert r.status_code == 413 and "TD3_MAX_DISTINCT_IDS" in r.json()["error"]["message"]


def test_compressed_size_limit_is_413_even_without_a_length(upload_client, auth):
    r = post(upload_client, auth, os.urandom(LIMITS["max_upload_bytes"] + 1), via="chunked")
    assert r.status_code == 413 and "TD3_MAX_UPLOAD_BYTES" in r.json()["error"]["message"]


def test_stored_names_have_no_control_characters(upload_client, auth):
    r = upload_client.post(
        "/v1/datasets",
        params={"filename": "evil\x00name\r\n.csv", "name": "a\x1b[31mb\u202e"},
        content=synthetic(),
        headers=auth,
    )
    assert r.status_code == 201, r.text
    assert r.json()["filename"] == "evilname.csv" and r.json()["name"] == "a[31mb"
    assert r.json()["status"] == "ready" and r.json()["error"] is None


def test_headerless_upload_named_by_columns_and_iso_times(upload_client, auth):
    rows = "".join(
        f"{u},{i},2024-01-{1 + (u + i) % 28:02d}T00:00:{i:02d}Z\n"
        for u in range(30)
        for i in range(8)
    )
    r = post(upload_client, auth, rows.encode(), columns="user_id,item_id,timestamp")
    assert r.status_code == 201, r.text
    assert r.json()["statistics"]["users"] == 30 and r.json()["format"] == "csv"


def test_no_temporary_upload_file_is_left(upload_client, auth):
    folder = Path(tempfile.gettempdir())
    before = set(folder.glob("td3-upload-*"))
    for body in (synthetic(), b"", gzip_bomb(), HEAD + b"u,i,x\n"):
        post(upload_client, auth, body)
    assert set(folder.glob("td3-upload-*")) == before


def test_same_upload_gives_the_same_dataset_bytes(upload_client, auth, db):
    from api.models import Dataset

    ids = [post(upload_client, auth, synthetic()).json()["id"] for _ in range(2)]
    with db.session() as s:
        contents = [s.get(Dataset, i).content for i in ids]
    assert contents[0] == contents[1]
    assert b"/tmp" not in contents[0] and b"td3-upload" not in contents[0]


# --- large uploads: parsed by the worker ----------------------------------------------------


@pytest.fixture(scope="module")
def async_settings(bounded):
    return bounded.model_copy(update={"inline_parse_bytes": 1024})


def _wait_dataset(client, auth, dataset_id, timeout=60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        ds = client.get(f"/v1/datasets/{dataset_id}", headers=auth).json()
        if ds["status"] != "processing":
            return ds
        assert time.monotonic() < deadline, ds
        time.sleep(0.2)


def test_large_upload_is_parsed_by_the_worker(async_settings, auth, worker):
    with TestClient(create_app(async_settings)) as client:
        r = post(client, auth, synthetic(), via="gzip")
        assert r.status_code == 202, r.text
        assert r.json()["status"] == "processing" and r.json()["statistics"] is None
        ds = _wait_dataset(client, auth, r.json()["id"])
        assert ds["status"] == "ready" and ds["statistics"]["users"] == 60, ds
        assert ds["format"] == "csv" and ds["error"] is None

        bad = post(client, auth, HEAD + b"u,i,1\n" * 300 + b"u,i,later\n")
        assert bad.status_code == 202
        failed = _wait_dataset(client, auth, bad.json()["id"])
        assert failed["status"] == "failed"
        assert failed["error"]["code"] == "invalid_data"
        assert "corpus.csv:302: non-numeric timestamp 'later'" in failed["error"]["message"]
        r = client.post(
            "/v1/jobs", json={"dataset_id": failed["id"], "config": TINY_CONFIG}, headers=auth
        )
        assert r.status_code == 409 and r.json()["error"]["code"] == "dataset_not_ready"


def test_job_on_a_processing_dataset_is_409(async_settings, auth):
    # a default queue no worker reads: the dataset stays processing
    idle = async_settings.model_copy(
        update={"default_queue": f"{async_settings.default_queue}-idle"}
    )
    with TestClient(create_app(idle)) as client:
        r = post(client, auth, synthetic())
        assert r.status_code == 202 and r.json()["status"] == "processing"
        job = client.post(
            "/v1/jobs", json={"dataset_id": r.json()["id"], "config": TINY_CONFIG}, headers=auth
        )
        assert job.status_code == 409 and job.json()["error"]["code"] == "dataset_not_ready"
        assert "still being processed" in job.json()["error"]["message"]
        assert client.delete(f"/v1/datasets/{r.json()['id']}", headers=auth).status_code == 204
    import redis

    redis.Redis.from_url(idle.broker_url).delete(idle.default_queue)


# --- peak memory of a real API process ----------------------------------------------------


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_bombs_keep_a_real_api_process_small(bounded, auth, capsys):
    """A uvicorn process with the service's settings: its peak resident memory after a
    gzip bomb and a line bomb (each refused) stays near its idle size."""
    port = free_port()
    env = {**os.environ, **bounded.child_env(), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "api.main:create_app",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.2)
        with httpx.Client(base_url=base, timeout=120) as client:
            post(client, auth, synthetic())  # warm: imports and pools settle
            idle = _peak_rss_mb(proc.pid)
            for bomb in (gzip_bomb(), line_bomb(), size_bomb()):
                r = post(client, auth, bomb, via="chunked")
                assert r.status_code == 413, r.text
            peak = _peak_rss_mb(proc.pid)
            assert client.get("/healthz").status_code == 200
        with capsys.disabled():
            print(f"\nAPI peak RSS: idle {idle:.0f} MB, after three bombs {peak:.0f} MB")
        assert peak - idle < 100, (idle, peak)
    finally:
        proc.terminate()
        proc.wait(10)


# --- the same data and settings give the same summary -------------------------------------


def test_same_data_and_settings_give_identical_summary_bytes(client, auth, worker):
    """Two uploads of one file, one job each: byte-identical summaries, and no server
    path anywhere in the summary's metadata."""
    from td3core.serialization import read_metadata

    digests, blobs = set(), []
    for _ in range(2):
        ds = post(client, auth, synthetic()).json()
        job = client.post(
            "/v1/jobs", json={"dataset_id": ds["id"], "config": TINY_CONFIG}, headers=auth
        ).json()
        deadline = time.monotonic() + 180
        while (state := client.get(f"/v1/jobs/{job['id']}", headers=auth).json())["status"] in (
            "queued",
            "running",
        ):
            assert time.monotonic() < deadline, state
            time.sleep(0.3)
        assert state["status"] == "succeeded", state
        r = client.get(f"/v1/jobs/{job['id']}/summary", headers=auth)
        digests.add(r.headers["x-content-sha256"])
        blobs.append(r.content)
    assert len(digests) == 1
    metadata = read_metadata(blobs[0])
    assert "corpus.csv" in metadata["config"]
    for leak in (tempfile.gettempdir(), "td3-upload", "/tmp/"):
        assert leak not in "".join(metadata.values())
