"""Summary exports: sampled RecBole .inter sequences, the dense .npy, the Dataset."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from td3core.data.readers import read_interactions_bytes
from td3core.errors import DataError
from td3core.export import SummaryDataset, npy_size, summary_to_inter, summary_to_npy
from td3core.summary import SummaryFile, TuckerSummary, summary_from_bytes, summary_to_bytes

MU, ZETA, N_ITEMS = 5, 7, 11


def make(temperature: float = 1.0, item_ids: list[str | None] | None = None) -> SummaryFile:
    g = torch.Generator().manual_seed(0)
    table = torch.randn(N_ITEMS + 1, 6, generator=g)
    summary = TuckerSummary(MU, ZETA, 3, table, temperature=temperature, generator=g)
    ids = item_ids or [None, *(f"item-{k * 10}" for k in range(1, N_ITEMS + 1))]
    blob = summary_to_bytes(summary, item_ids=ids, config={"x": 1}, dataset_sha256="ab" * 32)
    return summary_from_bytes(blob)


def dense(file: SummaryFile) -> np.ndarray:
    with torch.no_grad():
        return file.summary.probs(torch.arange(MU)).numpy()


def test_inter_is_a_recbole_file_of_sampled_sequences():
    file = make()
    data = summary_to_inter(file, seed=3)
    lines = data.decode().splitlines()
    assert lines[0] == "user_id:token\titem_id:token\ttimestamp:float"
    assert len(lines) == 1 + MU * ZETA
    inter = read_interactions_bytes(data, "summary.inter")
    assert inter.fmt == "recbole"
    assert set(inter.users) == {f"s{u}" for u in range(MU)}
    assert set(inter.items) <= set(file.item_ids[1:])
    times = inter.timestamps.reshape(MU, ZETA)
    assert (np.diff(times, axis=1) > 0).all()  # increasing along every sequence


def test_inter_is_seeded():
    file = make()
    assert summary_to_inter(file, seed=1) == summary_to_inter(file, seed=1)
    assert summary_to_inter(file, seed=1) != summary_to_inter(file, seed=2)


def test_inter_samples_from_the_summary_probabilities():
    file = make(temperature=1e-9)  # one-hot: every draw is the argmax
    best = dense(file).argmax(-1)
    rows = [line.split("\t") for line in summary_to_inter(file, seed=0).decode().splitlines()[1:]]
    drawn = np.array([file.item_ids.index(item) for _, item, _ in rows]).reshape(MU, ZETA)
    assert (drawn == best).all()


def test_inter_refuses_ids_that_break_the_format():
    ids: list[str | None] = [None, *(f"i{k}" for k in range(1, N_ITEMS + 1))]
    ids[4] = "a\tb"
    with pytest.raises(DataError, match="tab"):
        summary_to_inter(make(item_ids=ids), seed=0)


def test_npy_holds_the_dense_probabilities():
    file = make()
    blob = summary_to_npy(file, max_bytes=1 << 20)
    assert len(blob) == npy_size(file.summary)
    array = np.load(io.BytesIO(blob))
    assert array.shape == (MU, ZETA, N_ITEMS + 1) and array.dtype == np.float32
    np.testing.assert_allclose(array, dense(file), rtol=1e-6)
    assert (array[..., 0] == 0).all()
    np.testing.assert_allclose(array.sum(-1), 1.0, rtol=1e-5)


def test_npy_is_refused_above_the_limit_before_it_is_built():
    file = make()
    with pytest.raises(DataError) as info:
        summary_to_npy(file, max_bytes=npy_size(file.summary) - 1)
    assert "over the limit" in info.value.problem and "inter" in info.value.problem


def test_dataset_yields_soft_sequences_from_a_path_bytes_or_file(tmp_path):
    file = make()
    path = tmp_path / "s.safetensors"
    blob = summary_to_bytes(
        file.summary, item_ids=file.item_ids, config=file.config, dataset_sha256="ab" * 32
    )
    path.write_bytes(blob)
    expected = dense(file)
    for source in (str(path), path, blob, file):
        data = SummaryDataset(source)
        assert len(data) == MU and data.item_ids == file.item_ids
        np.testing.assert_allclose(data[2].numpy(), expected[2], rtol=1e-6)
    np.testing.assert_allclose(data[-1].numpy(), expected[-1], rtol=1e-6)
    with pytest.raises(IndexError):
        data[MU]
    batch = next(iter(torch.utils.data.DataLoader(data, batch_size=4)))
    assert batch.shape == (4, ZETA, N_ITEMS + 1)


def test_dataset_refuses_what_is_not_a_summary(tmp_path):
    with pytest.raises(DataError):
        SummaryDataset(b"not a summary")


def test_summary_bytes_depend_only_on_the_summary():
    """The same summary gives the same bytes, in this process and in another (the
    safetensors library orders metadata by a per-process hash)."""
    import hashlib
    import subprocess
    import sys

    code = (
        "import hashlib, torch\n"
        "from td3core.summary import TuckerSummary, summary_to_bytes\n"
        "g = torch.Generator().manual_seed(0)\n"
        "s = TuckerSummary(3, 4, 2, torch.randn(6, 3, generator=g), generator=g)\n"
        "ids = [None, *map(str, range(1, 6))]\n"
        "blob = summary_to_bytes(s, item_ids=ids, config={'b': 1, 'a': [2]}, dataset_sha256='x')\n"
        "print(hashlib.sha256(blob).hexdigest())\n"
    )
    runs = [
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        for _ in range(2)
    ]
    assert runs[0].stdout == runs[1].stdout
    file = make()
    blobs = {
        hashlib.sha256(
            summary_to_bytes(
                file.summary, item_ids=file.item_ids, config=file.config, dataset_sha256="ab"
            )
        ).hexdigest()
        for _ in range(5)
    }
    assert len(blobs) == 1
    again = summary_from_bytes(
        summary_to_bytes(file.summary, item_ids=file.item_ids, config={}, dataset_sha256="ab")
    )
    assert torch.equal(again.summary.G, file.summary.G) and again.item_ids == file.item_ids
