"""The pretrained teacher: a SASRec trained on the real data with the common
recipe, its item embeddings (V of the summary), a pool of per-epoch checkpoints
(RaT-BPTT draws learner starts from it) and its features for FSA."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

from td3core.config import ModelConfig, TrainConfig
from td3core.data.samples import Samples, Split
from td3core.errors import DataError
from td3core.models.sasrec import SASRec
from td3core.serialization import read_metadata
from td3core.training import FitResult, StepHook, state_copy, steps_per_epoch, train_on_samples

FORMAT = "td3-teacher/1"


@dataclass
class Teacher:
    model: SASRec  # best by valid MRR@10, eval mode
    fit: FitResult
    pool: list[dict[str, Tensor]]  # state_dicts (CPU) at the end of pool epochs
    pool_epochs: list[float]  # epoch of each pool entry; fractional = mid-epoch state
    pool_note: str = ""  # why the pool is not the requested epoch range, if it is not
    steps_per_epoch: int = 0
    model_config: ModelConfig = ModelConfig()  # the size the model was built with
    lr: float | None = None  # the recipe's learning rate (None: not recorded)
    # validation MRR@10 of every learning rate tried, when the teacher was searched
    lr_search: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def item_embeddings(self) -> Tensor:
        """V: the best model's item table [n_items+1, H], detached."""
        return self.model.item_embedding.weight.detach()

    def features(self, samples: Samples, batch_size: int = 1024) -> Tensor:
        """Last-layer hidden state at the last valid position, eval mode: [N, H]
        on the model's device. Deterministic, so callers may cache it."""
        device = self.model.item_embedding.weight.device
        was_training = self.model.training
        self.model.eval()
        # One output buffer filled in place: small per-batch results kept between the
        # batches' temporaries would pin gigabytes of freed heap on large data.
        out = torch.empty(len(samples), self.model.hidden, device=device)
        with torch.no_grad():
            for start in range(0, len(samples), batch_size):
                history = samples.history[start : start + batch_size].to(device)
                lengths = samples.lengths[start : start + batch_size].to(device)
                out[start : start + len(history)] = self.model.last_features(history, lengths)
        self.model.train(was_training)
        return out


def train_teacher(
    split: Split,
    negatives_valid: Tensor,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    *,
    pool_epochs: tuple[int, int] = (5, 30),
    device: torch.device | str = "cpu",
    on_step: StepHook | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Teacher:
    """Train a SASRec teacher; keep the state after every epoch in pool_epochs
    (inclusive, an epoch = one pass over split.train at train_cfg.batch_size).

    If training ends before the first pool epoch, the pool holds the states of the
    epochs that were completed plus the last state (mid-epoch), and pool_note says so.
    """
    first, last = pool_epochs
    torch.manual_seed(train_cfg.seed)  # the model's initialisation
    model = SASRec.from_config(split.n_items, split.max_len, model_cfg).to(device)
    per_epoch = steps_per_epoch(len(split.train), train_cfg.batch_size)
    pool: list[dict[str, Tensor]] = []
    epochs: list[float] = []
    early: list[tuple[float, dict[str, Tensor]]] = []  # epochs before `first`: a fallback
    latest: dict[str, Tensor] = {}  # last state, kept only while the pool is empty
    latest_step = 0

    def cpu_copy(m: torch.nn.Module) -> dict[str, Tensor]:
        return {k: v.cpu() for k, v in state_copy(m).items()}

    def record(step: int, m: torch.nn.Module) -> None:
        nonlocal latest_step
        epoch, end_of_epoch = divmod(step, per_epoch)
        if end_of_epoch == 0 and first <= epoch <= last:
            pool.append(cpu_copy(m))
            epochs.append(float(epoch))
        elif end_of_epoch == 0 and epoch < first:
            early.append((float(epoch), cpu_copy(m)))
        if not pool:  # cheap for a small model; needed only if we stop before `first`
            for k, v in m.state_dict().items():
                if k in latest:
                    latest[k].copy_(v.detach())
                else:
                    latest[k] = v.detach().to("cpu", copy=True)
            latest_step = step
        if on_step is not None:
            on_step(step, m)

    result = train_on_samples(
        model,
        split,
        negatives_valid,
        train_cfg,
        device=device,
        on_step=record,
        should_stop=should_stop,
    )
    note = ""
    if not pool:
        epochs = [e for e, _ in early]
        pool = [s for _, s in early]
        if latest_step and latest_step % per_epoch:
            epochs.append(latest_step / per_epoch)
            pool.append(latest)
        note = (
            f"training stopped at step {result.steps} (epoch "
            f"{result.steps / per_epoch:.2f}) before pool epoch {first}; the pool holds "
            f"epochs {[round(e, 2) for e in epochs]}"
        )
    model.eval()
    return Teacher(
        model=model,
        fit=result,
        pool=pool,
        pool_epochs=epochs,
        pool_note=note,
        steps_per_epoch=per_epoch,
        model_config=model_cfg,
        lr=train_cfg.lr,
    )


def teacher_state_to_bytes(teacher: Teacher) -> bytes:
    """safetensors: the best model as "model.*", pool entry i as "pool.<i>.*", and
    JSON metadata (format, sizes, model settings, fit record, pool epochs)."""
    m = teacher.model
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in m.state_dict().items()}
    for i, state in enumerate(teacher.pool):
        tensors.update({f"pool.{i}.{k}": v.cpu().contiguous() for k, v in state.items()})
    meta = {
        "format": FORMAT,
        "n_items": m.n_items,
        "max_len": m.max_len,
        "eps": m.norm.eps,
        "model": teacher.model_config.model_dump(),
        "fit": dataclasses.asdict(teacher.fit),
        "pool_size": len(teacher.pool),
        "pool_epochs": teacher.pool_epochs,
        "pool_note": teacher.pool_note,
        "steps_per_epoch": teacher.steps_per_epoch,
        "lr": teacher.lr,
        "lr_search": teacher.lr_search,
    }
    return st_save(tensors, metadata={"td3": json.dumps(meta)})


def _metadata(blob: bytes) -> dict:
    """Our settings, stored as one JSON string under the safetensors metadata key "td3"."""
    try:
        return json.loads(read_metadata(blob)["td3"])
    except (DataError, KeyError, ValueError) as exc:
        raise DataError(f"not a {FORMAT} checkpoint: {exc}") from exc


def teacher_state_from_bytes(blob: bytes, *, device: torch.device | str = "cpu") -> Teacher:
    meta = _metadata(blob)
    if meta.get("format") != FORMAT:
        raise DataError(f"expected format {FORMAT}, got {meta.get('format')!r}")
    tensors = st_load(blob)
    model_config = ModelConfig(**meta["model"])
    model = SASRec.from_config(meta["n_items"], meta["max_len"], model_config)
    for layer in model.modules():  # eps is not part of ModelConfig
        if isinstance(layer, torch.nn.LayerNorm):
            layer.eps = meta["eps"]
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    model.to(device).eval()
    pool = []
    for i in range(meta["pool_size"]):
        prefix = f"pool.{i}."
        pool.append({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
    return Teacher(
        model=model,
        fit=FitResult(**meta["fit"]),
        pool=pool,
        pool_epochs=meta["pool_epochs"],
        pool_note=meta["pool_note"],
        steps_per_epoch=meta["steps_per_epoch"],
        model_config=model_config,
        lr=meta.get("lr"),  # absent from teachers saved before it was recorded
        lr_search=meta.get("lr_search", {}),
    )
