import json

import pytest
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from td3core.errors import DataError
from td3core.serialization import read_metadata
from td3core.summary import (
    SUMMARY_FORMAT,
    TuckerSummary,
    load_summary,
    save_summary,
    summary_from_bytes,
    summary_to_bytes,
)

N_ITEMS, D3 = 12, 6


def make_summary(temperature: float = 1.0) -> TuckerSummary:
    V = torch.randn(N_ITEMS + 1, D3, generator=torch.Generator().manual_seed(0))
    return TuckerSummary(
        5, 7, 3, V, temperature=temperature, generator=torch.Generator().manual_seed(1)
    )


ITEM_IDS = [None] + [f"item-{k}" for k in range(1, N_ITEMS + 1)]


def test_probabilities_follow_the_contract_formula():
    s = make_summary(temperature=0.5)
    users = torch.tensor([0, 3])
    probs = s.probs(users)  # [2, 7, n+1]
    assert probs.shape == (2, 7, N_ITEMS + 1)
    assert torch.all(probs[..., 0] == 0)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 7))
    full = torch.einsum("abc,ua,tb,ic->uti", s.G, s.U, s.T, s.V) / 0.5
    expected = torch.softmax(full[..., 1:], dim=-1)[users]
    torch.testing.assert_close(probs[..., 1:], expected)


def test_file_round_trip_and_contract(tmp_path):
    s = make_summary(temperature=0.7)
    path = tmp_path / "s.safetensors"
    save_summary(path, s, item_ids=ITEM_IDS, config={"job": {"x": 1}}, dataset_sha256="ab" * 32)
    raw = path.read_bytes()
    tensors = load_tensors(raw)
    assert set(tensors) == {"G", "U", "T", "V"}
    assert tensors["G"].shape == (3, 3, D3) and tensors["U"].shape == (5, 3)
    assert tensors["T"].shape == (7, 3) and tensors["V"].shape == (N_ITEMS + 1, D3)
    meta = read_metadata(raw)
    assert meta["format"] == SUMMARY_FORMAT == "td3-summary/1"
    assert json.loads(meta["item_ids"]) == ITEM_IDS
    assert float(meta["temperature"]) == 0.7
    assert json.loads(meta["config"]) == {"job": {"x": 1}}
    assert meta["dataset_sha256"] == "ab" * 32

    loaded = load_summary(path)
    for name in ("G", "U", "T", "V"):
        assert torch.equal(getattr(loaded.summary, name), getattr(s, name))
    assert loaded.item_ids == ITEM_IDS and loaded.summary.temperature == 0.7
    users = torch.arange(5)
    assert torch.equal(loaded.summary.probs(users), s.probs(users))


def test_item_ids_must_list_padding_first():
    with pytest.raises(ValueError, match="None"):
        summary_to_bytes(
            make_summary(), item_ids=ITEM_IDS[1:] + ["x"], config={}, dataset_sha256=""
        )


def test_foreign_or_broken_files_are_rejected():
    with pytest.raises(DataError, match="not a safetensors"):
        summary_from_bytes(b"definitely not a summary")
    other = save_tensors({"G": torch.zeros(1)}, metadata={"format": "something/1"})
    with pytest.raises(DataError, match="format"):
        summary_from_bytes(other)
    good = summary_to_bytes(make_summary(), item_ids=ITEM_IDS, config={}, dataset_sha256="")
    tensors, meta = load_tensors(good), read_metadata(good)
    tensors["U"] = torch.zeros(5, 4)  # no longer chains with G [3, 3, d3]
    with pytest.raises(DataError, match="shapes do not chain"):
        summary_from_bytes(save_tensors(tensors, metadata=meta))
    del tensors["T"]
    with pytest.raises(DataError, match="missing tensors"):
        summary_from_bytes(save_tensors(tensors, metadata=meta))
