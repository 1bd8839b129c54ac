"""Speed of TD3's distillation (issue "Speed"): time per outer and inner step and
peak memory of the inner-loop engines, side by side in the same run.

    python bench/speed.py                          # engines: fast "func" vs "higher"
    python bench/speed.py --sweep items size window real-batch --json speed.json
    python bench/speed.py --end-to-end magazine    # teacher + 30 epochs on the real file
    python bench/speed.py --device cuda ...        # the same on a GPU

Every measurement runs in a fresh child process (so CPU peak RSS belongs to it)
on synthetic interactions of the real datasets' shapes
(`td3core.data.generate_interactions`); the distillation is the library's
`Distiller`, the teacher `train_teacher` (a few steps: its quality does not change
the cost). The engines are timed in ONE child, alternating outer steps with the
same seeds (so the same numbers of plain steps), which keeps a shared machine's
load drift out of the ratio; wall time and the compute thread's CPU time are both
recorded. Per inner step: outer-step time / (plain steps + W), all included.
"""

from __future__ import annotations

import argparse
import bisect
import ctypes
import dataclasses
import importlib
import io
import json
import multiprocessing as mp
import re
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from td3core.config import DistillConfig, JobConfig, ModelConfig, TrainConfig
from td3core.data import (
    PreprocessConfig,
    build_dataset,
    generate_interactions,
    leave_one_out,
    read_interactions,
)
from td3core.data.samples import Split
from td3core.distill import Distiller, DistillProgress, train_config_for_selection
from td3core.errors import Cancelled
from td3core.evaluation import sample_negatives
from td3core.experiment import Experiment
from td3core.learner import train_on_summary
from td3core.summary import Summary
from td3core.teacher import Teacher, train_teacher

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = REPO.parent / "shared" / "data"
MODEL = ModelConfig()  # the authors' SASRec: hidden 32, 1 head, 1 layer, inner 64


@dataclass(frozen=True)
class Case:
    """One configuration: the real data's shape and the distillation settings."""

    name: str
    users: int  # real users (synthetic interactions)
    items: int  # |V|
    mean_length: int
    mu: int
    zeta: int
    inner_steps: int = 200
    window: int = 40
    real_batch: int = 1024
    synthetic_batch: int = 20
    item_chunk: int = DistillConfig.model_fields["item_chunk"].default
    real_chunk: int = DistillConfig.model_fields["real_chunk"].default
    engines: tuple[str, ...] = ("func",)

    def distill_config(self, engine: str) -> DistillConfig:
        return DistillConfig(
            users=self.mu,
            length=self.zeta,
            inner_steps=self.inner_steps,
            window=self.window,
            real_batch=self.real_batch,
            synthetic_batch=self.synthetic_batch,
            item_chunk=self.item_chunk,
            real_chunk=self.real_chunk,
            epochs=1000,  # never reached: we time single outer steps
            backend=engine,
            # The start does not change an outer step's cost, and the real start's fit
            # (mu x zeta x |V| per step) would dominate the setup of the 1M-item sweep.
            init="random",
        )


MAGAZINE = Case("magazine-shape", users=665, items=848, mean_length=7, mu=30, zeta=20)
ML100K = Case(
    "ml-100k-shape", users=943, items=1349, mean_length=105, mu=50, zeta=50, real_batch=4096
)
# ML-1M at the issue's size [200x100] with the authors' batches (real 32,768, synthetic 25)
ML1M = Case(
    "ml-1m-shape",
    users=6040,
    items=3416,
    mean_length=163,
    mu=200,
    zeta=100,
    real_batch=32768,
    synthetic_batch=25,
)
ENGINES = ("func", "higher")
GRAPHS = "func+graphs"  # the fast engine with its inner loop replayed from CUDA graphs (GPU)
GRAPHED_SWEEPS = ("engines", "ml-1m-shape")  # where --cuda-graphs adds GRAPHS
# Catalogue sweeps: short inner loops (10 steps, window 5) so 1M items stays minutes on a
# CPU; above `item_chunk` items (default 16,384) the distillation reads items in chunks.
LARGE = dataclasses.replace(MAGAZINE, inner_steps=10, window=5)
HUNDRED_K = dataclasses.replace(LARGE, items=100_000, users=10_000)


def catalogue(items: int) -> Case:
    return dataclasses.replace(
        LARGE, name=f"items={items}", items=items, users=max(665, items // 10)
    )


SWEEPS: dict[str, list[Case]] = {
    "engines": [
        dataclasses.replace(MAGAZINE, engines=ENGINES),
        dataclasses.replace(ML100K, engines=ENGINES),
    ],
    "items": [catalogue(n) for n in (1_000, 10_000, 100_000, 1_000_000)],
    "items-large": [catalogue(n) for n in (100_000, 1_000_000)],  # a lent GPU's short time
    "ml-1m-shape": [ML1M],
    "chunk": [
        dataclasses.replace(HUNDRED_K, name=f"chunk={c}", item_chunk=c)
        for c in (1_024, 4_096, 16_384)
    ]
    + [dataclasses.replace(HUNDRED_K, name="dense (chunk >= items)", item_chunk=100_000)],
    "size-100k": [
        dataclasses.replace(HUNDRED_K, name=f"{mu}x{zeta}", mu=mu, zeta=zeta, mean_length=zeta)
        for mu, zeta in ((30, 20), (50, 50), (100, 50))
    ],
    "size": [
        dataclasses.replace(MAGAZINE, name=f"{mu}x{zeta}", mu=mu, zeta=zeta, mean_length=zeta)
        for mu, zeta in ((30, 20), (50, 50), (200, 50), (200, 100))
    ],
    "window": [dataclasses.replace(MAGAZINE, name=f"W={w}", window=w) for w in (10, 20, 40, 80)],
    "real-chunk": [
        dataclasses.replace(ML1M, name=f"real chunk {c}", real_chunk=c) for c in (32768, 8192, 2048)
    ],
    "real-chunk-ml100k": [
        dataclasses.replace(ML100K, name=f"real chunk {c}", real_chunk=c)
        for c in (4096, 2048, 1024)
    ],
    "real-batch": [
        dataclasses.replace(ML100K, name=f"real batch {b}", real_batch=b)
        for b in (256, 1024, 4096, 16384)
    ],
}


# ------------------------------------------------------------------ measuring
def peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated since the last reset; CPU: the process's peak RSS since
    the last reset (Linux VmHWM)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # no reset possible


def reset_peak_memory(device: torch.device) -> None:
    """Start the peak over, so the teacher's own peak does not hide the distillation's."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM


def memory_now_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def synthetic_split(case: Case) -> tuple[Split, torch.Tensor]:
    inter = generate_interactions(
        n_users=case.users, n_items=case.items, mean_length=case.mean_length, seed=0
    )
    split = leave_one_out(build_dataset(inter, PreprocessConfig(kcore="none")), case.zeta)
    # Items that no sequence uses still cost what |V| costs: keep the catalogue size.
    split = dataclasses.replace(split, n_items=max(split.n_items, case.items))
    return split, sample_negatives(split.valid, split.sequences, split.n_items, n=100, seed=0)


def quick_teacher(
    split: Split, negatives: torch.Tensor, device: str, model: ModelConfig = MODEL
) -> Teacher:
    recipe = TrainConfig(max_steps=8, eval_every=8, batch_size=256)
    return train_teacher(split, negatives, model, recipe, pool_epochs=(1, 3), device=device)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def profile_outer_step(distiller: Distiller, device: torch.device) -> dict[str, Any]:
    """One outer step under torch's profiler, per phase of `Distiller` (its `td3.*`
    ranges): host time (the main thread's, which waits for autograd's own thread),
    and the device operations that started while the phase ran on the host, with their
    time. Host time far above device time = launch-bound. Device work queued behind
    the host is counted in the phase that follows (approximate at the boundaries);
    the profiler's overhead inflates host times: compare phases, not runs."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        started = time.perf_counter()
        distiller.outer_step()  # ends with .item(): synchronised
        wall = time.perf_counter() - started
    events = prof.events()
    ranges = sorted(
        (e.time_range.start, e.time_range.end, e.name)
        for e in events
        if e.name.startswith("td3.") and e.device_type == torch.autograd.DeviceType.CPU
    )
    phases = {
        name: {"calls": 0, "host_ms": 0.0, "device_ops": 0, "device_ms": 0.0}
        for name in ["before the phases", *(name for _, _, name in ranges)]
    }
    for begin, end, name in ranges:
        phases[name]["calls"] += 1
        phases[name]["host_ms"] += (end - begin) / 1000
    starts = [begin for begin, _, _ in ranges]
    for e in events:
        if e.device_type == torch.autograd.DeviceType.CPU or e.name.startswith("td3."):
            continue
        at = bisect.bisect_right(starts, e.time_range.start) - 1
        phase = phases[ranges[at][2] if at >= 0 else "before the phases"]
        phase["device_ops"] += 1
        phase["device_ms"] += e.time_range.elapsed_us() / 1000
    return {"wall_ms": 1000 * wall, "phases": phases}


def host_syncs(distiller: Distiller) -> dict[str, int]:
    """Where one outer step makes the host wait for the GPU: 'file:line' -> count, from
    torch's synchronisation debug mode (the step's own `.item()`s at the end included)."""
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            distiller.outer_step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    lines = [
        f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)
    ]
    return {line: lines.count(line) for line in sorted(set(lines))}


def meta_gradient_gap(
    case: Case, split: Split, negatives: torch.Tensor, device: str
) -> dict[str, float]:
    """||g_func - g_higher|| / ||g_higher|| ("gap") for the meta-gradient of one outer
    step on `case`'s shape, where the two engines compute the same function: float64,
    dropout off (they draw their masks differently), Adam's eps negligible (`higher`
    adds it before the bias correction, torch after), no clipping. Each engine's
    norm and count of non-finite entries too, so a NaN gap says where it came from."""
    model = MODEL.model_copy(update={"attn_dropout": 0.0, "hidden_dropout": 0.0})
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        teacher = quick_teacher(split, negatives, device, model)
        grads = {}
        for engine in ENGINES:
            settings = case.distill_config(engine).model_dump()
            config = DistillConfig(**{**settings, "inner_eps": 1e-30, "grad_clip": 1e6})
            d = Distiller(config, split, teacher, model, select=lambda s: 0.0, device=device)
            d.outer_step()
            grads[engine] = torch.cat([p.grad.flatten() for p in d.summary.parameters()])
    finally:
        torch.set_default_dtype(old)
    out = {"gap": float((grads["func"] - grads["higher"]).norm() / grads["higher"].norm())}
    for engine, g in grads.items():
        out[f"{engine}_norm"] = float(g.norm())
        out[f"{engine}_non_finite"] = int((~torch.isfinite(g)).sum())
    return out


def export_baseline(rev: str) -> Path:
    """td3core at git revision `rev`, renamed `td3core_baseline` (so both versions
    load in one process), in a temporary folder; returns that folder."""
    folder = Path(tempfile.mkdtemp(prefix="td3-baseline-"))
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "td3core"], check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    package = folder / "td3core_baseline"
    (folder / "td3core").rename(package)
    for path in package.rglob("*.py"):
        path.write_text(re.sub(r"\btd3core\b", "td3core_baseline", path.read_text()))
    return folder


def baseline_distiller(folder: str, case: Case, split: Split, teacher: Teacher, device: str) -> Any:
    """The previous code's Distiller (its default engine) on the same data and teacher."""
    sys.path.insert(0, folder)
    config = importlib.import_module("td3core_baseline.config")
    distill = importlib.import_module("td3core_baseline.distill")
    # the settings that revision knows (its DistillConfig refuses unknown fields), less
    # the engine: it runs its own default
    known = set(config.DistillConfig.model_fields) - {"backend"}
    settings = {k: v for k, v in case.distill_config("func").model_dump().items() if k in known}
    return distill.Distiller(
        config.DistillConfig(**settings),
        split,
        teacher,
        config.ModelConfig(**MODEL.model_dump()),
        select=lambda s: 0.0,
        device=device,
    )


def measure(
    case: Case,
    steps: int,
    device: str,
    threads: int,
    baseline: str | None = None,
    checks: bool = True,
    profile: bool = False,
) -> dict[str, Any]:
    """Runs in a child: time `steps` outer steps of each engine (alternating).
    Engine "baseline" is the previous code's default engine, exported to `baseline`.
    `checks`: also list the host syncs (CUDA) and compare the engines' meta-gradients
    (off in the children that only measure one engine's memory). `profile`: then one
    more outer step of each engine under the profiler (`profile_outer_step`)."""
    torch.set_num_threads(threads)
    log(f"{case.name} {'/'.join(case.engines)}: data")
    split, negatives = synthetic_split(case)
    log(f"{case.name}: teacher")
    teacher = quick_teacher(split, negatives, device)
    log(f"{case.name}: distillers")
    dev = torch.device(device)
    distillers = {
        engine: baseline_distiller(baseline, case, split, teacher, device)
        if engine == "baseline" and baseline
        else Distiller(
            case.distill_config("func" if engine == GRAPHS else engine),
            split,
            teacher,
            MODEL,
            select=lambda s: 0.0,
            device=dev,
            cuda_graphs=engine == GRAPHS,
        )
        for engine in case.engines
    }
    # The outer steps' memory, from here: glibc keeps freed heap (the teacher's, the
    # feature cache's batches) resident until trimmed, which hid it by gigabytes.
    if dev.type == "cpu":
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    before = memory_now_mb(dev)
    reset_peak_memory(dev)
    times: dict[str, list[float]] = {e: [] for e in case.engines}
    cpu: dict[str, list[float]] = {e: [] for e in case.engines}
    plain: list[float] = []
    log(f"{case.name}: {steps} timed outer steps after one to warm up")
    # CUDA resets its peak per engine step, so each engine's peak comes from this child
    peaks = dict.fromkeys(case.engines, 0.0)
    for step in range(steps + 1):  # step 0 warms up (allocator, lazy init)
        for engine, d in distillers.items():
            if dev.type == "cuda":
                reset_peak_memory(dev)
            started, started_cpu = time.perf_counter(), time.thread_time()
            losses = d.outer_step()  # ends with .item(): synchronised
            if step:
                times[engine].append(time.perf_counter() - started)
                cpu[engine].append(time.thread_time() - started_cpu)
            peaks[engine] = max(peaks[engine], peak_memory_mb(dev))
        if step:
            plain.append(losses["plain_steps"])
    out: dict[str, Any] = {
        "case": dataclasses.asdict(case),
        "n_items": split.n_items,
        "device": device,
        "threads": threads,
        "plain_steps": plain,
        "engines": {},
    }
    inner_steps = sum(plain) + case.window * len(plain)
    for engine, t in times.items():
        out["engines"][engine] = {
            "outer_s": t,
            "outer_mean_s": float(np.mean(t)),
            "outer_min_s": float(np.min(t)),
            # CPU time of this (the only compute) thread: what another process's load
            # on a shared machine inflates least.
            "outer_cpu_s": cpu[engine],
            "outer_cpu_mean_s": float(np.mean(cpu[engine])),
            "inner_step_ms": 1000 * float(np.sum(t) / inner_steps),
        }
    out["peak_memory_mb"] = max(peaks.values())
    out["peak_memory_by_engine_mb"] = peaks
    out["memory_before_distill_mb"] = before
    if profile:
        log(f"{case.name}: profiling")
        out["profile"] = {e: profile_outer_step(d, dev) for e, d in distillers.items()}
    log(f"{case.name}: checks")
    if checks and dev.type == "cuda":
        out["host_syncs"] = host_syncs(next(iter(distillers.values())))
    if checks and set(ENGINES) <= set(case.engines):  # after the peak: not timed
        del distillers
        out["meta_gradient_gap"] = meta_gradient_gap(case, split, negatives, device)
    return out


def in_child(fn, *args) -> Any:
    """fn(*args) in a fresh process (spawned: its own peak RSS and thread pool)."""
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def fits(case: Case, device: str) -> str:
    """Why `case` is skipped on this device ("" if it is not): the dense path holds
    B x zeta x |V| probabilities and real batch x |V| logits, several times over."""
    dense_bytes = (case.synthetic_batch * case.zeta + case.real_batch) * case.items * 4 * 6
    if device == "cpu" and case.items <= case.item_chunk and dense_bytes > 2**34:
        return f"skipped on CPU: the dense path needs about {dense_bytes / 2**30:.0f} GiB"
    return ""


# ------------------------------------------------------------------ end to end
@dataclass(frozen=True)
class RealData:
    path: str
    fmt: str
    mu: int
    zeta: int
    real_batch: int
    synthetic_batch: int
    paper: str  # Table 5 of the paper: one A100, 30 epochs


REAL = {
    "magazine": RealData(
        "magazine/Magazine_Subscriptions.csv", "amazon", 30, 20, 1024, 15, "21 min / 0.7 GB"
    ),
    "ml-100k": RealData("ml-100k/u.data", "ml-100k", 50, 50, 4096, 15, "1 h 58 min / 3.5 GB"),
    "ml-1m": RealData("ml-1m/ml-1m.5core.tsv.gz", "tsv", 50, 50, 32768, 25, "2 h 27 min / 9.8 GB"),
}


def end_to_end(
    name: str,
    epochs: int,
    device: str,
    threads: int,
    data_root: Path,
    size: tuple[int, int] | None = None,
    time_limit: float | None = None,
    cuda_graphs: bool = False,
) -> dict[str, Any]:
    """Teacher + `epochs` epochs of distillation (with the per-epoch selection) on the
    real file, with the authors' batches (docs/METHOD.md §1) and the library defaults.
    `size` (mu, zeta) replaces the dataset's usual summary size. `time_limit` (seconds,
    the whole run) stops the distillation of a run that would outlast it: the row is
    then marked partial and gives the steps done and the rate they ran at."""
    torch.set_num_threads(threads)
    spec = REAL[name]
    mu, zeta = size or (spec.mu, spec.zeta)
    phases: dict[str, float] = {}
    started = time.perf_counter()
    distill = DistillConfig(
        users=mu,
        length=zeta,
        epochs=epochs,
        real_batch=spec.real_batch,
        synthetic_batch=spec.synthetic_batch,
    )
    job = JobConfig(distill=distill, model=MODEL)
    dataset = build_dataset(read_interactions(data_root / spec.path, fmt=spec.fmt))
    experiment = Experiment.for_job(dataset, job, device=device)
    split, negatives = experiment.split, experiment.negatives_valid
    phases["data"] = time.perf_counter() - started
    mark = time.perf_counter()
    teacher, _ = experiment.train_teacher(job)
    phases["teacher"] = time.perf_counter() - mark
    dev = torch.device(device)
    peaks = {"data and teacher": peak_memory_mb(dev)}
    reset_peak_memory(dev)  # the distillation's own peak from here
    recipe = train_config_for_selection(job.learner, distill.select_steps)
    select_seconds = 0.0

    def select(summary: Summary) -> float:
        nonlocal select_seconds
        mark = time.perf_counter()
        _, fit = train_on_summary(
            summary, split, negatives, job.model, recipe, alt=distill.alt, device=device
        )
        select_seconds += time.perf_counter() - mark
        return fit.best_metric

    def progress(p: DistillProgress) -> None:
        if p.step % max(1, p.total // 30) == 0:
            eta = p.eta_seconds or 0.0
            print(
                f"  {time.perf_counter() - started:.0f} s: epoch {p.epoch} "
                f"step {p.step}/{p.total} eta {eta:.0f} s",
                file=sys.stderr,
            )

    mark = time.perf_counter()
    distiller = Distiller(
        distill, split, teacher, job.model, select=select, device=device, cuda_graphs=cuda_graphs
    )
    best: float | None = None
    try:
        best = distiller.run(
            on_progress=progress,
            should_cancel=lambda: (
                time_limit is not None and time.perf_counter() - started > time_limit
            ),
        ).best_valid_mrr10
    except Cancelled:
        print(f"  time limit: stopped after {distiller.step} outer steps", file=sys.stderr)
    phases["distillation"] = time.perf_counter() - mark
    phases["of which selection"] = select_seconds
    phases["total"] = time.perf_counter() - started
    peaks["distillation"] = peak_memory_mb(dev)
    per_step = (phases["distillation"] - select_seconds) / max(distiller.step, 1)
    return {
        "dataset": name,
        "size": [mu, zeta],
        "device": device,
        "cuda_graphs": cuda_graphs,
        "threads": threads,
        "epochs": epochs,
        "outer_steps": distiller.total_steps,
        "outer_steps_done": distiller.step,
        "partial": distiller.step < distiller.total_steps,
        "n_items": split.n_items,
        "train_samples": len(split.train),
        "config": distill.model_dump(),
        "seconds": phases,
        "seconds_per_outer_step": per_step,
        "peak_memory_mb": max(peaks["data and teacher"], peaks["distillation"]),
        "peak_memory_by_phase_mb": peaks,
        "best_valid_mrr10": best,
        "paper_table5": spec.paper,
    }


# ------------------------------------------------------------------ printing
def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def speed_table(title: str, rows: list[dict[str, Any]]) -> str:
    lines = [
        f"### {title}",
        "",
        "| case | engine | items (chunk) | mu x zeta | inner / W | real batch (chunk) "
        "| mean plain steps "
        "| outer step, wall (s) | outer step, CPU (s) | per inner step, all in (ms) "
        "| peak memory (MB) | this / func (wall; CPU); relative meta-gradient gap (float64) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "skipped" in row:
            lines.append(
                f"| {row['case']['name']} | - | {row['case']['items']} | {row['skipped']} |"
            )
            continue
        case, engines = row["case"], row["engines"]
        ratios = {}
        for other in ("higher", "baseline", GRAPHS):
            if "func" in engines and other in engines:
                func, them = engines["func"], engines[other]
                per_step = np.array(them["outer_s"]) / np.array(func["outer_s"])
                ratios[other] = (
                    f"{them['outer_mean_s'] / func['outer_mean_s']:.2f}x "
                    f"(median per step {np.median(per_step):.2f}x); "
                    f"{them['outer_cpu_mean_s'] / func['outer_cpu_mean_s']:.2f}x"
                )
        if "meta_gradient_gap" in row:
            ratios["higher"] += f"; meta-gradient gap {row['meta_gradient_gap']['gap']:.1e}"
        for engine, e in engines.items():
            memory = row["memory"].get(engine, {})
            chunk = case["item_chunk"] if row["n_items"] > case["item_chunk"] else "dense"
            lines.append(
                f"| {case['name']} | {engine} | {row['n_items']} ({chunk}) "
                f"| {case['mu']}x{case['zeta']} "
                f"| {case['inner_steps']} / {case['window']} | {case['real_batch']} "
                f"({min(case['real_chunk'], case['real_batch'])}) "
                f"| {np.mean(row['plain_steps']):.0f} | {e['outer_mean_s']:.3f} "
                f"| {e['outer_cpu_mean_s']:.3f} | {e['inner_step_ms']:.2f} "
                f"| {memory.get('peak_memory_mb', float('nan')):.0f} "
                f"(+{memory.get('distill_mb', float('nan')):.0f}) | {ratios.get(engine, '')} |"
            )
    return "\n".join(lines)


def profile_table(row: dict[str, Any]) -> str:
    lines = [
        f"\nOne profiled outer step, {row['case']['name']}: per phase, host ms / device "
        "ops / device ms (the operations that started during the phase)",
        "",
        "| engine | wall (ms) | phases |",
        "|---|---|---|",
    ]
    for engine, p in row["profile"].items():
        phases = "; ".join(
            f"{name.removeprefix('td3.')} {v['host_ms']:.0f} / {v['device_ops']} / "
            f"{v['device_ms']:.0f}"
            for name, v in p["phases"].items()
        )
        lines.append(f"| {engine} | {p['wall_ms']:.0f} | {phases} |")
    return "\n".join(lines)


def end_to_end_table(row: dict[str, Any]) -> str:
    s, peaks = row["seconds"], row["peak_memory_by_phase_mb"]
    mu, zeta = row["size"]
    done = (
        f"PARTIAL: stopped by the time limit after {row['outer_steps_done']} of "
        f"{row['outer_steps']} outer steps"
        if row["partial"]
        else f"{row['outer_steps']} outer steps"
    )
    return "\n".join(
        [
            f"### End to end: {row['dataset']} [{mu}x{zeta}] ({row['epochs']} epochs, {done}, "
            f"{row['device']}{', CUDA graphs' if row['cuda_graphs'] else ''}, "
            f"{row['threads']} thread(s))",
            "",
            "| data | teacher | distillation (of which selection) | total | per outer step "
            "| peak memory: data and teacher / distillation "
            "| paper Table 5 (one A100, 30 epochs) |",
            "|---|---|---|---|---|---|---|",
            f"| {minutes(s['data'])} | {minutes(s['teacher'])} | {minutes(s['distillation'])} "
            f"({minutes(s['of which selection'])}) | {minutes(s['total'])} "
            f"| {row['seconds_per_outer_step']:.2f} s | {peaks['data and teacher'] / 1024:.1f} / "
            f"{peaks['distillation'] / 1024:.1f} GB "
            f"| {row['paper_table5']} |",
        ]
    )


# ------------------------------------------------------------------ main
def summary_size(text: str) -> tuple[int, int]:
    """'200x100' -> (200, 100)."""
    match = re.fullmatch(r"(\d+)x(\d+)", text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected MUxZETA such as 200x100, got {text!r}")
    return int(match[1]), int(match[2])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sweep", nargs="+", choices=sorted(SWEEPS), default=["engines"])
    p.add_argument("--end-to-end", choices=sorted(REAL), help="teacher + distillation on a file")
    p.add_argument("--epochs", type=int, default=30, help="end-to-end epochs (paper: 30)")
    p.add_argument(
        "--size",
        type=summary_size,
        metavar="MUxZETA",
        help="end-to-end summary size instead of the dataset's usual one, e.g. 200x100",
    )
    p.add_argument(
        "--time-limit",
        type=float,
        metavar="SECONDS",
        help="end to end: stop the distillation once the whole run has taken this long "
        "(the row is then marked partial)",
    )
    p.add_argument("--steps", type=int, default=6, help="timed outer steps per engine")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data-root", type=Path, default=DATA_ROOT)
    p.add_argument(
        "--cuda-graphs",
        action="store_true",
        help=f"engines sweep: also time {GRAPHS!r}, the ordinary steps replayed from CUDA "
        "graphs; end to end: distil with them",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="also profile one outer step per engine: host and device time per phase",
    )
    p.add_argument("--json", type=Path, help="write the measurements here")
    p.add_argument(
        "--baseline",
        metavar="REV",
        help="also time the default engine of git revision REV (engines sweep), e.g. aba62e0",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report: dict[str, Any] = {"device": args.device, "threads": args.threads}
    baseline = str(export_baseline(args.baseline)) if args.baseline else None
    report["baseline"] = args.baseline
    if args.end_to_end:
        row = end_to_end(
            args.end_to_end,
            args.epochs,
            args.device,
            args.threads,
            args.data_root,
            size=args.size,
            time_limit=args.time_limit,
            cuda_graphs=args.cuda_graphs,
        )
        report["end_to_end"] = row
        print(end_to_end_table(row))
    else:
        for sweep in args.sweep:
            rows = []
            for case in SWEEPS[sweep]:
                why = fits(case, args.device)
                if why:
                    print(f"note: {case.name}: {why}", file=sys.stderr)
                    rows.append({"case": dataclasses.asdict(case), "skipped": why})
                    continue
                log(f"{sweep}: {case.name}")
                if baseline and sweep == "engines":
                    case = dataclasses.replace(case, engines=(*case.engines, "baseline"))
                if args.cuda_graphs and sweep in GRAPHED_SWEEPS:
                    case = dataclasses.replace(case, engines=(*case.engines, GRAPHS))
                row = in_child(
                    measure,
                    case,
                    args.steps,
                    args.device,
                    args.threads,
                    baseline,
                    True,
                    args.profile,
                )
                # Memory per engine: CUDA's peaks were reset per engine; on the CPU each
                # engine runs alone in a child (peak RSS only grows).
                row["memory"] = {}
                if len(case.engines) == 1 or args.device != "cpu":
                    for engine, peak in row["peak_memory_by_engine_mb"].items():
                        row["memory"][engine] = {
                            "peak_memory_mb": peak,
                            "distill_mb": peak - row["memory_before_distill_mb"],
                        }
                for engine in case.engines if not row["memory"] else ():
                    alone = dataclasses.replace(case, engines=(engine,))
                    m = in_child(measure, alone, 1, args.device, args.threads, baseline, False)
                    row["memory"][engine] = {
                        "peak_memory_mb": m["peak_memory_mb"],
                        "distill_mb": m["peak_memory_mb"] - m["memory_before_distill_mb"],
                    }
                rows.append(row)
                # the table so far, in case a deadline stops the sweep
                print(speed_table(f"{sweep} so far", rows), file=sys.stderr)
            report[sweep] = rows
            print(speed_table(f"{sweep} ({args.device}, {args.threads} thread(s))", rows))
            for row in rows:
                if "profile" in row:
                    print(profile_table(row))
                if "host_syncs" in row:
                    name = row["case"]["name"]
                    print(f"\nhost syncs in one outer step, {name}: {row['host_syncs']}")
            print()
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
