import json

import pytest
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from td3core.errors import DataError
from td3core.serialization import read_metadata
from td3core.summary import (
    FARZI_FORMAT,
    SUMMARY_FORMAT,
    FarziSummary,
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


def make_farzi(users: int = 5, length: int = 7, n_items: int = N_ITEMS, seed: int = 1):
    return FarziSummary(
        users, length, 3, n_items, temperature=0.7, generator=torch.Generator().manual_seed(seed)
    )


def test_farzi_probabilities_are_distributions_over_real_items():
    s = make_farzi()
    assert (s.users, s.length, s.n_items) == (5, 7, N_ITEMS)
    probs = s.probs(torch.tensor([4, 0]))
    assert probs.shape == (2, 7, N_ITEMS + 1)
    assert torch.equal(probs[..., 0], torch.zeros(2, 7))  # padding, exactly 0
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 7))
    expected = torch.softmax(s.latent[[4, 0]] @ s.decoder / 0.7, dim=-1)
    torch.testing.assert_close(probs[..., 1:], expected)
    assert torch.equal(make_farzi().latent, s.latent)  # seeded
    assert not torch.equal(make_farzi(seed=2).latent, s.latent)


def _parameters(summary: torch.nn.Module) -> int:
    return sum(p.numel() for p in summary.parameters())


def test_farzi_parameters_grow_with_the_items_and_the_length():
    base = _parameters(make_farzi())
    assert base == 5 * 7 * 3 + 3 * N_ITEMS
    assert _parameters(make_farzi(n_items=10 * N_ITEMS)) - base == 3 * 9 * N_ITEMS
    assert _parameters(make_farzi(length=14)) - base == 5 * 7 * 3
    # TD3's borrows the item side (V is a frozen buffer): its count ignores the items
    tucker = [TuckerSummary(5, 7, 3, torch.zeros(n + 1, D3)) for n in (N_ITEMS, 10 * N_ITEMS)]
    assert _parameters(tucker[0]) == _parameters(tucker[1])


def test_farzi_file_round_trip_under_its_own_format():
    s = make_farzi()
    data = summary_to_bytes(s, item_ids=ITEM_IDS, config={"a": 1}, dataset_sha256="abc")
    assert read_metadata(data)["format"] == FARZI_FORMAT != SUMMARY_FORMAT
    assert set(load_tensors(data)) == {"latent", "decoder"}
    loaded = summary_from_bytes(data)
    assert isinstance(loaded.summary, FarziSummary)
    assert loaded.item_ids == ITEM_IDS and loaded.summary.temperature == 0.7
    users = torch.arange(5)
    assert torch.equal(loaded.summary.probs(users), s.probs(users))
    tensors, meta = load_tensors(data), read_metadata(data)
    tensors["decoder"] = torch.zeros(4, N_ITEMS)  # latent holds d = 3
    with pytest.raises(DataError, match="shapes do not chain"):
        summary_from_bytes(save_tensors(tensors, metadata=meta))
    tensors["decoder"] = torch.zeros(3, N_ITEMS + 1)  # one item more than item_ids list
    with pytest.raises(DataError, match="item_ids"):
        summary_from_bytes(save_tensors(tensors, metadata=meta))
    # a Farzi file relabelled as the Tucker contract lacks its tensors
    with pytest.raises(DataError, match="missing tensors"):
        summary_from_bytes(save_tensors(tensors, metadata=meta | {"format": SUMMARY_FORMAT}))
