import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from td3core.config import ModelConfig
from td3core.models import SASRec
from td3core.models.sasrec import SelfAttention, additive_mask

N_ITEMS, MAX_LEN = 50, 8


def model(**kw) -> SASRec:
    torch.manual_seed(0)
    return SASRec(N_ITEMS, MAX_LEN, **kw)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    lengths = torch.tensor([8, 5, 1, 3])
    items = torch.randint(1, N_ITEMS + 1, (4, MAX_LEN), generator=g)
    items[torch.arange(MAX_LEN) >= lengths[:, None]] = 0  # right padding
    return items, lengths


def test_shapes_and_init():
    m = model(hidden=16, heads=2, layers=2, inner=32)
    items, lengths = batch()
    assert m.sequence_features(items, lengths).shape == (4, MAX_LEN, 16)
    assert m.last_features(items, lengths).shape == (4, 16)
    assert m.score_all(items, lengths).shape == (4, N_ITEMS + 1)
    assert m.logits(torch.zeros(2, 3, 16)).shape == (2, 3, N_ITEMS + 1)
    assert m.item_embedding.weight.std().item() == pytest.approx(0.02, rel=0.2)
    assert torch.all(m.norm.weight == 1) and torch.all(m.norm.bias == 0)
    assert m.norm.eps == 1e-12


def test_from_config():
    m = SASRec.from_config(N_ITEMS, MAX_LEN, ModelConfig(hidden=8, heads=2, layers=3))
    assert len(m.blocks) == 3 and m.item_embedding.weight.shape == (N_ITEMS + 1, 8)


def test_too_long_input_is_a_clear_error():
    with pytest.raises(ValueError, match="exceeds max_len"):
        model().sequence_features(torch.ones(1, MAX_LEN + 1, dtype=torch.long))


def test_probs_path_matches_ids_path():
    m = model(layers=2).eval()
    items, lengths = batch()
    probs = F.one_hot(items, N_ITEMS + 1).float()
    a = m.sequence_features(items, lengths)
    b = m.sequence_features(probs=probs, lengths=lengths)
    assert torch.allclose(a, b, atol=1e-5)
    full = items.clone()
    full[full == 0] = 7  # no padding: probs without lengths = every position valid
    assert torch.allclose(
        m.sequence_features(full),
        m.sequence_features(probs=F.one_hot(full, N_ITEMS + 1).float()),
        atol=1e-5,
    )


def test_padding_does_not_change_real_positions():
    m = model(layers=2).eval()
    items, lengths = batch()
    short = m.sequence_features(items[:, :5].clamp(max=N_ITEMS), lengths.clamp(max=5))
    # same prefixes, other junk in the padded tail
    noisy = items.clone()
    noisy[noisy == 0] = 3
    long = m.sequence_features(noisy, lengths)
    for row, n in enumerate(lengths.clamp(max=5).tolist()):
        assert torch.allclose(short[row, :n], long[row, :n], atol=1e-5)
    assert torch.allclose(
        m.last_features(items, lengths), m.last_features(noisy, lengths), atol=1e-5
    )


def test_heavy_padding_is_finite():
    m = model(layers=3).eval()
    items = torch.zeros(3, MAX_LEN, dtype=torch.long)
    items[:, 0] = torch.tensor([1, 2, 3])
    lengths = torch.ones(3, dtype=torch.long)
    assert torch.isfinite(m.sequence_features(items, lengths)).all()
    assert torch.isfinite(m.score_all(items, lengths)).all()


def test_forward_outputs():
    m = model().eval()
    items, lengths = batch()
    assert torch.allclose(m(items, lengths, output="scores"), m.score_all(items, lengths))
    assert torch.allclose(m(items, lengths, output="last"), m.last_features(items, lengths))
    assert m(items, lengths, output="logits").shape == (4, MAX_LEN, N_ITEMS + 1)


def test_functional_call_double_backward():
    m = model(layers=2).train()  # dropout on, as in the inner loop
    items, lengths = batch()
    params = {k: v.detach().clone().requires_grad_() for k, v in m.named_parameters()}
    probs = torch.softmax(torch.randn(4, MAX_LEN, N_ITEMS + 1), -1).requires_grad_()
    targets = torch.tensor([0, 1, 2, 3])

    def inner_loss(p):  # soft-input path, as a learner reads a summary
        scores = functional_call(m, p, (), {"probs": probs, "output": "scores"})
        return F.cross_entropy(scores[:, 1:], targets)

    grads = torch.autograd.grad(inner_loss(params), list(params.values()), create_graph=True)
    stepped = {k: v - 0.1 * g for (k, v), g in zip(params.items(), grads, strict=True)}
    # ids path on the stepped weights, then the meta-gradient back to probs and params
    scores = functional_call(m, stepped, (items, lengths), {"output": "scores"})
    outer = F.cross_entropy(scores[:, 1:], targets) + inner_loss(stepped)
    meta = torch.autograd.grad(outer, [probs, params["item_embedding.weight"]])
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in meta)


@pytest.mark.parametrize("heads", [1, 2])
def test_few_query_attention_is_attention_with_the_same_dropout(heads):
    torch.manual_seed(0)
    attention = SelfAttention(8, heads, attn_dropout=0.5, hidden_dropout=0.0, eps=1e-12)
    with torch.no_grad():
        for p in attention.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x, query = torch.randn(3, 6, 8), torch.randn(3, 2, 8)
    mask = additive_mask(torch.rand(3, 1, 2, 6) > 0.3, x.dtype)

    def reference() -> torch.Tensor:  # every key and value projected, as in forward
        d = 8 // heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(t.shape[0], t.shape[1], heads, d).transpose(1, 2)

        q, k, v = split(attention.query(query)), split(attention.key(x)), split(attention.value(x))
        scores = q @ k.transpose(-1, -2) / d**0.5 + mask
        attn = attention.attn_dropout(torch.softmax(scores, -1))  # weights need not sum to 1
        context = (attn @ v).transpose(1, 2).reshape(query.shape)
        return attention.norm(attention.out_dropout(attention.dense(context)) + query)

    torch.manual_seed(1)
    expected = reference()
    torch.manual_seed(1)
    torch.testing.assert_close(attention(x, mask, query), expected)


def test_vmap_over_stacked_learners():
    learners = [model() for _ in range(3)]
    params, _ = stack_module_state(learners)
    probs = torch.softmax(torch.randn(3, 2, MAX_LEN, N_ITEMS + 1), -1)

    def scores(p, x):
        return functional_call(learners[0], p, (), {"probs": x, "output": "scores"})

    out = vmap(scores, randomness="different")(params, probs)  # dropout differs per learner
    assert out.shape == (3, 2, N_ITEMS + 1) and torch.isfinite(out).all()


@pytest.mark.parametrize("layers, heads", [(1, 1), (2, 2)])
def test_last_only_is_the_full_pass_at_the_last_position(layers, heads):
    m = model(hidden=16, heads=heads, layers=layers, attn_dropout=0.0, hidden_dropout=0.0)
    with torch.no_grad():  # biases start at 0: make every term of the attention count
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    items, lengths = batch()
    full = m.last_features(items, lengths)
    fast = m.last_features(items, lengths, last_only=True)
    torch.testing.assert_close(fast, full)
    weights = torch.randn_like(full)
    params = list(m.parameters())
    # The key bias shifts every score of a query alike, so softmax cancels it: its
    # gradient is 0, and the last-query pass leaves it out of the graph altogether.
    for a, b in zip(
        torch.autograd.grad((full * weights).sum(), params),
        torch.autograd.grad((fast * weights).sum(), params, materialize_grads=True),
        strict=True,
    ):
        torch.testing.assert_close(a, b)
