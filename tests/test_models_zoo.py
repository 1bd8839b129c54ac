"""Every learner of the zoo honours the common interface: ids and soft input agree,
scores are finite and at chance level untrained, each one learns a toy pattern with
the common recipe, runs under torch.func, and trains on a summary with both
objectives."""

import pytest
import torch
import torch.nn.functional as F
from helpers_distill import tiny_split
from helpers_models import chain_sequences, make_split, random_sequences
from torch.func import functional_call

from td3core.config import LEARNER_NAMES, ModelConfig, TrainConfig
from td3core.errors import ConfigError
from td3core.evaluation import evaluate, sample_negatives
from td3core.learner import soft_loss, train_on_summary
from td3core.models import (
    LEARNERS,
    NARM,
    BERT4Rec,
    SASRec,
    build_model,
    recommender,
)
from td3core.models.bert4rec import cloze_mask
from td3core.models.layers import gather_last
from td3core.summary import TuckerSummary
from td3core.training import train_on_samples

ZOO = list(LEARNERS)
# Small sizes for the training tests: same architectures, a fraction of the cost.
SMALL = {
    "sasrec": dict(hidden=16, inner=32),
    "sasrec-2x64": dict(hidden=16, inner=32),
    "gru4rec": dict(embedding=16, hidden=32),
    "narm": dict(embedding=16, hidden=32),
    "bert4rec": dict(hidden=16, inner=32),
}
N_ITEMS, MAX_LEN = 30, 8


def model(name: str, **size) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, N_ITEMS, MAX_LEN, **size)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    lengths = torch.tensor([8, 5, 1, 3])
    items = torch.randint(1, N_ITEMS + 1, (4, MAX_LEN), generator=g)
    items[torch.arange(MAX_LEN) >= lengths[:, None]] = 0  # right padding
    return items, lengths


def test_registry():
    assert set(ZOO) == {"sasrec", "sasrec-2x64", "gru4rec", "narm", "bert4rec"}
    big = build_model("sasrec-2x64", N_ITEMS, MAX_LEN)
    assert isinstance(big, SASRec) and len(big.blocks) == 2 and big.hidden == 64
    assert build_model("sasrec", N_ITEMS, MAX_LEN, hidden=8).hidden == 8
    with pytest.raises(ConfigError, match="unknown learner"):
        build_model("caser", N_ITEMS, MAX_LEN)
    with pytest.raises(ConfigError, match="gru4rec has no setting heads"):
        build_model("gru4rec", N_ITEMS, MAX_LEN, heads=2)


@pytest.mark.parametrize("name", ZOO)
def test_interface_shapes_and_soft_input(name):
    m = recommender(model(name).eval())  # refuses a model without the interface
    assert m.item_embedding.padding_idx == 0 and m.item_embedding.num_embeddings == N_ITEMS + 1
    items, lengths = batch()
    feats = m.sequence_features(items, lengths)
    hidden = feats.shape[-1]
    assert feats.shape == (4, MAX_LEN, hidden)
    soft = m.sequence_features(probs=F.one_hot(items, N_ITEMS + 1).float(), lengths=lengths)
    assert torch.allclose(feats, soft, atol=1e-5)  # a one-hot row is that item's embedding
    last = m.last_features(items, lengths)
    scores = m.score_all(items, lengths)
    assert last.shape == (4, hidden) and scores.shape == (4, N_ITEMS + 1)
    assert torch.isfinite(scores).all()
    assert m.logits(torch.zeros(2, 3, hidden)).shape == (2, 3, N_ITEMS + 1)
    assert torch.allclose(m(items, lengths, output="scores"), scores)
    if not isinstance(m, BERT4Rec):  # causal: the last features are those of the last position
        assert torch.allclose(gather_last(feats, lengths), last, atol=1e-5)


def test_a_module_without_the_interface_is_refused_by_name():
    class NoTable(SASRec):  # the scoring methods, but no item table
        def __init__(self):
            super().__init__(N_ITEMS, MAX_LEN)
            del self.item_embedding

    with pytest.raises(TypeError, match=r"NoTable does not implement .* \(no item_embedding\)"):
        recommender(NoTable())
    with pytest.raises(TypeError, match="no n_items, max_len, item_embedding, sequence_features"):
        recommender(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("name", ZOO)
def test_padding_never_reaches_the_scores(name):
    m = model(name).eval()
    items, lengths = batch()
    noisy = items.clone()
    noisy[noisy == 0] = 3  # junk in the padded tail
    assert torch.allclose(m.score_all(items, lengths), m.score_all(noisy, lengths), atol=1e-5)


@pytest.mark.parametrize("name", ["sasrec", "gru4rec", "narm"])
def test_causal_learners_never_see_the_future(name):
    # what training on a summary relies on: position t predicts t+1 without seeing it
    m = model(name).eval()
    probs = torch.softmax(torch.randn(2, MAX_LEN, N_ITEMS + 1), -1)
    changed = probs.clone()
    changed[:, 5:] = torch.softmax(torch.randn(2, MAX_LEN - 5, N_ITEMS + 1), -1)
    a, b = m.sequence_features(probs=probs), m.sequence_features(probs=changed)
    assert torch.allclose(a[:, :5], b[:, :5], atol=1e-5) and not torch.allclose(a, b)


def test_bert4rec_full_history_drops_its_oldest_item():
    m = model("bert4rec").eval()
    items, lengths = batch()  # row 0 is full (MAX_LEN items)
    shorter = torch.zeros_like(items[:1])
    shorter[0, : MAX_LEN - 1] = items[0, 1:]
    assert torch.allclose(
        m.score_all(items[:1], lengths[:1]),
        m.score_all(shorter, torch.tensor([MAX_LEN - 1])),
        atol=1e-5,
    )


def test_narm_position_t_is_narm_on_the_prefix():
    m = model("narm").eval()
    items, lengths = batch()
    feats = m.sequence_features(items[:1], lengths[:1])  # one full-length row
    for t in (0, 3, 7):
        prefix = m.last_features(items[:1, : t + 1], torch.tensor([t + 1]))
        assert torch.allclose(feats[:, t], prefix, atol=1e-5)


@pytest.mark.parametrize("name", ZOO)
def test_untrained_scores_chance(name):
    n_items, users = 300, 1000
    seqs = random_sequences(users, n_items, seed=0)
    split = make_split(seqs, n_items, max_len=20)
    negs = sample_negatives(split.test, seqs, n_items, seed=0)
    torch.manual_seed(0)
    m = build_model(name, n_items, 20)
    out = evaluate(m, split.test, split, negs, full_ranking=False, batch_size=500)
    assert 5.0 < out["uni100"]["HR@10"] < 15.0  # chance: 10/101 = 9.9 %


@pytest.fixture(scope="module")
def chain():
    n_items, max_len = 40, 10
    split = make_split(chain_sequences(200, n_items, length=12, seed=0), n_items, max_len)
    negatives = sample_negatives(split.valid, split.sequences, n_items, n=20, seed=0)
    return split, negatives


@pytest.mark.parametrize("name", ZOO)
def test_learns_a_successor_pattern(name, chain):
    split, negatives = chain
    torch.manual_seed(0)
    m = build_model(name, split.n_items, split.max_len, **SMALL[name])
    cfg = TrainConfig(batch_size=64, max_steps=300, eval_every=50, patience=3, lr=0.01)
    fit = train_on_samples(m, split, negatives, cfg)
    # chance MRR@10 among 21 candidates is about 14 %; the successor is right ~90 % of the time
    assert fit.best_metric > 50, fit.history


def test_bert4rec_training_is_deterministic(chain):
    split, negatives = chain
    cfg = TrainConfig(batch_size=32, max_steps=6, eval_every=3, lr=0.01, seed=4)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        m = build_model("bert4rec", split.n_items, split.max_len, **SMALL["bert4rec"])
        runs.append((train_on_samples(m, split, negatives, cfg), m))
    (a, ma), (b, mb) = runs
    assert a.history == b.history
    assert all(torch.equal(x, y) for x, y in zip(ma.parameters(), mb.parameters(), strict=True))


def test_cloze_mask():
    lengths = torch.tensor([1, 4, 9, 9] * 50)
    positions = torch.arange(10)
    valid = positions < lengths[:, None]
    last = positions == (lengths - 1)[:, None]

    def draw(mask_ratio, last_ratio, seed=0):
        g = torch.Generator().manual_seed(seed)
        return cloze_mask(lengths, 10, mask_ratio, last_ratio, g)

    assert torch.equal(draw(0.2, 1.0), last)  # "mask the last item" samples only
    assert torch.equal(draw(1.0, 0.0), valid)  # every valid position
    assert torch.equal(draw(0.0, 0.0), last)  # a row that drew nothing predicts its last
    masked = draw(0.2, 0.5)
    assert masked.any(1).all() and not (masked & ~valid).any()
    assert torch.equal(masked, draw(0.2, 0.5)) and not torch.equal(masked, draw(0.2, 0.5, 1))


@pytest.mark.parametrize("name", ZOO)
def test_functional_call_and_meta_gradient(name):
    m = model(name, **SMALL[name]).train()  # dropout on, as in an inner loop
    items, lengths = batch()
    params = {k: v.detach().clone().requires_grad_() for k, v in m.named_parameters()}
    m.eval()
    assert torch.allclose(
        functional_call(m, params, (items, lengths), {"output": "scores"}),
        m.score_all(items, lengths),
        atol=1e-5,
    )
    m.train()
    probs = torch.softmax(torch.randn(4, MAX_LEN, N_ITEMS + 1), -1).requires_grad_()
    targets = torch.tensor([0, 1, 2, 3])

    def inner_loss(p):  # soft input, as a learner reads a summary
        scores = functional_call(m, p, (), {"probs": probs, "output": "scores"})
        return F.cross_entropy(scores[:, 1:], targets)

    grads = torch.autograd.grad(inner_loss(params), list(params.values()), create_graph=True)
    stepped = {k: v - 0.1 * g for (k, v), g in zip(params.items(), grads, strict=True)}
    scores = functional_call(m, stepped, (items, lengths), {"output": "scores"})
    meta = torch.autograd.grad(F.cross_entropy(scores[:, 1:], targets), [probs])
    assert torch.isfinite(meta[0]).all() and meta[0].abs().sum() > 0


@pytest.mark.parametrize("objective", ["inner", "kl-all"])
@pytest.mark.parametrize("name", ZOO)
def test_soft_objectives_teach_the_successor_pattern(name, objective, chain):
    # a hand-made "summary": soft chains, 0.8 on the successor's item, the rest spread
    split, negatives = chain
    n, length = split.n_items, split.max_len
    g = torch.Generator().manual_seed(0)
    ids = (torch.randint(0, n, (32, 1), generator=g) + torch.arange(length)) % n + 1
    probs = F.one_hot(ids, n + 1).float() * 0.8 + 0.2 / n
    probs[..., 0] = 0
    torch.manual_seed(0)
    m = build_model(name, n, length, **SMALL[name])
    optimizer = torch.optim.Adam(m.parameters(), lr=0.01)
    bidirectional = name == "bert4rec"  # fewer targets per sequence: it needs more steps
    for _ in range(400 if bidirectional else 150):
        rows = torch.randint(0, 32, (16,), generator=g)
        loss = soft_loss(m, probs[rows], objective, alt=True, generator=g)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    metrics = evaluate(m, split.valid, split, negatives, full_ranking=False, ks=(10,))
    assert metrics["uni100"]["MRR@10"] > (35 if bidirectional else 60)  # chance: about 14


@pytest.fixture(scope="module")
def summary():
    split, negatives = tiny_split()
    g = torch.Generator().manual_seed(0)
    table = torch.randn(split.n_items + 1, 6, generator=g)
    return TuckerSummary(6, 8, 3, table, generator=g), split, negatives


@pytest.mark.parametrize("objective", ["inner", "kl-all"])
@pytest.mark.parametrize("name", ZOO)
def test_train_on_summary(name, objective, summary):
    tucker, split, negatives = summary
    cfg = TrainConfig(batch_size=3, max_steps=4, eval_every=2, lr=0.01)
    torch.manual_seed(cfg.seed)
    fresh = build_model(name, split.n_items, split.max_len, **SMALL[name])
    model, fit = train_on_summary(
        tucker,
        split,
        negatives,
        ModelConfig(hidden=16, inner=32),
        cfg,
        learner=name,
        size=SMALL[name],
        objective=objective,
    )
    assert type(model) is type(fresh) and fit.steps == 4 and fit.best_metric >= 0
    trained = dict(model.named_parameters())
    assert any(not torch.equal(p, trained[k]) for k, p in fresh.named_parameters())


def test_train_on_summary_item_embeddings(summary):
    tucker, split, negatives = summary
    cfg = TrainConfig(batch_size=3, max_steps=1, eval_every=1)
    table = torch.randn(split.n_items + 1, 16)
    model, _ = train_on_summary(
        tucker, split, negatives, ModelConfig(hidden=16, inner=32), cfg, item_embeddings=table
    )
    assert isinstance(model, SASRec)  # the default learner: today's behaviour
    assert torch.allclose(model.item_embedding.weight, table, atol=0.05)  # one Adam step away
    with pytest.raises(ConfigError, match="cannot start a narm learner"):
        train_on_summary(
            tucker, split, negatives, ModelConfig(), cfg, learner="narm", item_embeddings=table
        )
    assert isinstance(build_model("narm", 3, 4), NARM)


def test_the_registry_holds_exactly_the_learners_the_settings_accept() -> None:
    assert set(LEARNERS) == set(LEARNER_NAMES)
