"""Reproduce the paper's comparison on one dataset: full data, the sampling
baselines and TD3, on the SAME split with the SAME negatives, beside the paper's
numbers (Tables 2 and 3, typed in below and labelled as the paper's).

    python bench/reproduce.py --dataset magazine --epochs 10 --json bench/magazine.json

Everything is trained by the library (`Experiment`, `evaluation_rows`,
`Experiment.train_teacher`, `Distiller`); this script only schedules the runs and prints the tables.

* The teacher is trained once (seed = the teacher recipe's seed) and serves every
  distillation seed: the best on validation of the full-data runs at the teacher's lrs
  (`JobConfig.teacher_lrs`). Each run is exactly `Experiment.train_real(split, seed=, lr=)`
  at that seed and lr (same recipe, initialisation and batches), so the full-data row's
  search reuses them; other full-data runs are trained separately (`--full-from-scratch`
  trains all of them).
* TD3: one summary per distillation seed (0..N-1), `--eval-seeds` fresh learners each;
  mean +- std over all those learners (with one learner each: over distillation seeds).
  "paper-compatible" learners start from the teacher's item embeddings (the authors'
  evaluation; it leaks the full data into the learner).
* Baselines: seeds 0..N-1 (the seed picks the sample and the training run).
* `--method farzi` distils Farzi Data's summary (the paper's baseline) instead of TD3's,
  with everything else the same; its rows are named `farzi...`.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from td3.library_commands import add_distill_options, distill_job_config
from td3core.config import DistillConfig, JobConfig
from td3core.data import PreprocessConfig, build_dataset, read_interactions
from td3core.distill import DistillProgress
from td3core.experiment import Experiment, Reusable, aggregate, evaluation_rows
from td3core.summary import Summary

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = REPO.parent / "shared" / "data"
METRICS = ("HR@10", "NDCG@10", "MRR@10")
BASELINES = ("random-interactions", "random-users", "longest")
LABELS = {
    "full": "Full data",
    "random-interactions": 'Random interactions (paper "Random")',
    "random-users": "Random users",
    "longest": 'Longest (paper "Longest")',
    "td3": "TD3 (honest: fresh learners)",
    "td3-kl-all": "TD3 (honest, learners trained with KL at every position)",
    "td3-paper": "TD3 (paper-compatible: teacher's item table, leaky)",
    "td3-kl-all-paper": "TD3 (paper-compatible, KL at every position)",
}
# The same rows for a Farzi Data summary (--method farzi), the paper's baseline.
LABELS |= {
    key.replace("td3", "farzi", 1): label.replace("TD3", "Farzi Data", 1)
    for key, label in LABELS.items()
    if key.startswith("td3")
}
# Summary rows of td3core.experiment -> this table's rows (for --method tucker).
TD3_ROWS = {
    "summary": "td3",
    "summary (kl-all)": "td3-kl-all",
    "summary (paper-compatible)": "td3-paper",
    "summary (kl-all) (paper-compatible)": "td3-kl-all-paper",
}


def summary_rows(method: str) -> dict[str, str]:
    """TD3_ROWS named after the summary's method: a Farzi summary's rows are never
    set beside the paper's TD3 numbers."""
    name = "td3" if method == "tucker" else method
    return {row: key.replace("td3", name, 1) for row, key in TD3_ROWS.items()}


Paper = dict[str, dict[str, tuple[float, float]]]  # row -> metric -> (mean, std), uni100, %


@dataclass(frozen=True)
class DatasetSpec:
    path: str  # relative to the data root
    fmt: str
    users: int
    length: int
    paper: Paper  # THE PAPER'S numbers (uni100, 100 sampled negatives), not ours
    real_batch: int  # the authors' real-data batch for this dataset (docs/METHOD.md §1)
    paper_note: str = ""
    preprocess: dict[str, Any] = field(default_factory=dict)
    reader: dict[str, Any] = field(default_factory=dict)  # ReaderOptions besides fmt


# Paper (Table 2: full data and TD3; Table 3: Random, Longest). Only uni100 is reported
# there; the paper has no "random users" row and no full-ranking numbers.
DATASETS: dict[str, DatasetSpec] = {
    "magazine": DatasetSpec(
        path="magazine/Magazine_Subscriptions.csv",
        fmt="amazon",
        users=30,
        length=20,
        paper={
            "full": {"HR@10": (45.40, 0.76), "NDCG@10": (25.63, 0.28), "MRR@10": (19.47, 0.22)},
            "random-interactions": {"HR@10": (15.44, 2.68), "NDCG@10": (7.75, 1.16)},
            "longest": {"HR@10": (19.62, 0.31), "NDCG@10": (9.58, 0.58)},
            "td3-paper": {
                "HR@10": (47.87, 1.54),
                "NDCG@10": (27.90, 0.88),
                "MRR@10": (21.75, 0.77),
            },
        },
        real_batch=1024,
        paper_note="paper: Magazine [30x20], Tables 2-3 (their data: 408 users / 758 items, "
        "Amazon 2023; ours: 2018 file, 665 / 848 after the same filter)",
    ),
    "ml-100k": DatasetSpec(
        path="ml-100k/u.data",
        fmt="ml-100k",
        users=50,
        length=50,
        paper={
            "full": {"HR@10": (69.46, 0.26), "NDCG@10": (41.34, 0.49), "MRR@10": (32.65, 0.70)},
            "random-interactions": {"HR@10": (10.85, 2.30), "NDCG@10": (4.81, 1.10)},
            "longest": {"HR@10": (13.36, 0.45), "NDCG@10": (5.97, 0.32)},
            "td3-paper": {
                "HR@10": (68.79, 0.49),
                "NDCG@10": (40.62, 0.16),
                "MRR@10": (31.90, 0.19),
            },
        },
        real_batch=4096,
        paper_note="paper: ML-100k [50x50] Table 2 (full, TD3); Random and Longest are "
        "Table 3's [30x50] (the paper gives none at [50x50])",
    ),
    "ml-1m": DatasetSpec(
        # the 5-core file (the full ratings.dat is not available; docs in shared/data)
        path="ml-1m/ml-1m.5core.tsv.gz",
        fmt="tsv",
        users=200,
        length=100,
        paper={
            "full": {"HR@10": (78.22, 0.28), "NDCG@10": (57.37, 0.11), "MRR@10": (50.78, 0.07)},
            "random-interactions": {"HR@10": (15.88, 0.22), "NDCG@10": (7.40, 0.11)},
            "longest": {"HR@10": (16.60, 0.51), "NDCG@10": (7.77, 0.16)},
            "td3-paper": {
                "HR@10": (74.45, 0.17),
                "NDCG@10": (51.61, 0.20),
                "MRR@10": (44.42, 0.21),
            },
        },
        real_batch=32768,
        paper_note="paper: ML-1M [200x100] Table 2 (full, TD3); Random and Longest are "
        "Table 3's [200x50]",
    ),
}


# ------------------------------------------------------------------ measuring
class Phases:
    """Wall time and peak memory of each phase (CPU: the process's peak RSS so far,
    which only grows; CUDA: peak allocated during the phase)."""

    def __init__(self, device: str):
        self.device = device
        self.records: dict[str, dict[str, float]] = {}
        self._name = ""
        self._started = 0.0

    def start(self, name: str) -> None:
        self._name, self._started = name, time.perf_counter()
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        print(f"[{time.strftime('%H:%M:%S')}] {name} ...", file=sys.stderr, flush=True)

    def stop(self) -> None:
        if self.device.startswith("cuda"):
            peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        seconds = time.perf_counter() - self._started
        self.records[self._name] = {"seconds": seconds, "peak_memory_mb": peak}
        print(f"    {self._name}: {seconds:.1f} s", file=sys.stderr, flush=True)


# ------------------------------------------------------------------- settings
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", choices=sorted(DATASETS), default="magazine")
    p.add_argument("--data-root", type=Path, default=DATA_ROOT)
    add_distill_options(p, size_required=False)  # --users/--length: the dataset's paper size
    p.add_argument("--real-batch", type=int, help="real-data batch (default: the authors')")
    p.add_argument("--distill-seeds", type=int, default=3)
    p.add_argument(
        "--first-distill-seed",
        type=int,
        default=0,
        help="distillation seeds run: this one and the next --distill-seeds - 1 "
        "(so seeds can run in parallel processes)",
    )
    p.add_argument("--sample-seeds", type=int, default=3, help="seeds of baselines and full")
    p.add_argument("--eval-seeds", type=int, default=1, help="learners per summary")
    p.add_argument("--skip", default="", help="comma-separated rows to skip (e.g. longest)")
    p.add_argument(
        "--full-from-scratch",
        action="store_true",
        help="train every full-data run separately (do not reuse the teacher)",
    )
    p.add_argument("--no-paper-compatible", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="distil with the inner loop replayed from CUDA graphs (a CUDA device only)",
    )
    p.add_argument("--json", type=Path, help="save everything (settings, runs, tables) here")
    args = p.parse_args(argv)
    if args.cuda_graphs and not args.device.startswith("cuda"):
        p.error("--cuda-graphs needs a CUDA --device")  # before an hour of teacher training
    return args


def job_config(args: argparse.Namespace, spec: DatasetSpec) -> JobConfig:
    """The job settings: the command line's, else the dataset's paper size and the
    authors' real batch for it."""
    args.users, args.length = args.users or spec.users, args.length or spec.length
    job = distill_job_config(args, eval_seeds=args.eval_seeds)
    if args.real_batch is None:
        job = job.model_copy(
            update={"distill": job.distill.model_copy(update={"real_batch": spec.real_batch})}
        )
    return job


# ------------------------------------------------------------------- running
def distill_one(
    bench: Experiment, job: JobConfig, teacher: Any, seed: int, cuda_graphs: bool
) -> tuple[Summary, dict[str, Any]]:
    cfg: DistillConfig = job.distill.model_copy(update={"seed": seed})
    distiller = bench.distiller(cfg, teacher, cuda_graphs=cuda_graphs)
    bar = tqdm(total=distiller.total_steps, desc=f"distill seed {seed}", file=sys.stderr)

    def on_progress(p: DistillProgress) -> None:
        bar.n = p.step
        bar.set_postfix(epoch=p.epoch, ce=round(p.losses["ce"], 3), fsa=round(p.losses["fsa"], 3))

    result = distiller.run(on_progress=on_progress)
    bar.close()
    info = {
        "seed": seed,
        "best_epoch": result.best_epoch,
        "best_valid_mrr10": result.best_valid_mrr10,
        "curves": result.curves,
        "seconds": result.seconds,
    }
    return result.summary, info


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    spec = DATASETS[args.dataset]
    job = job_config(args, spec)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    phases = Phases(args.device)

    phases.start("data")
    inter = read_interactions(args.data_root / spec.path, fmt=spec.fmt, **spec.reader)
    dataset = build_dataset(inter, PreprocessConfig(**spec.preprocess))
    bench = Experiment.for_job(dataset, job, device=args.device)
    split = bench.split
    phases.stop()
    users, length = job.distill.users, job.distill.length

    phases.start(f"teacher (= full-data runs, seed {job.teacher.seed}, lrs {job.teacher_lrs})")
    teacher, teacher_runs = bench.train_teacher(job)
    phases.stop()

    distillations: list[dict[str, Any]] = []
    summaries: list[Summary] = []
    distill_seeds = range(args.first_distill_seed, args.first_distill_seed + args.distill_seeds)
    if "td3" not in skip:
        for seed in distill_seeds:
            phases.start(f"distillation seed {seed}")
            summary, info = distill_one(bench, job, teacher, seed, args.cuda_graphs)
            phases.stop()
            summaries.append(summary)
            distillations.append(info)

    # The teacher's runs are full-data SASRec runs at their seed and lr; --full-from-scratch
    # trains them again.
    reuse: Reusable = {} if args.full_from_scratch else teacher_runs
    sample_seeds = list(range(args.sample_seeds))
    learner_seeds = [job.learner.seed + i for i in range(job.eval_seeds)]
    leaky = None if args.no_paper_compatible else teacher.item_embeddings
    tables: dict[str, dict[str, Any]] = {}
    all_runs: dict[str, dict[str, list[dict]]] = {}
    row_names = summary_rows(job.distill.method)
    for learner in job.learners:
        runs: dict[str, list[dict]] = {}
        for name in ("full", *BASELINES):
            if name in skip:
                continue
            phases.start(f"{learner}: {name}, seeds {sample_seeds}")
            runs.update(evaluation_rows(bench, [name], summary=None, users=users, length=length,
                                        seeds=sample_seeds, lrs=job.search_lrs, alt=False,
                                        learner=learner, reuse=reuse))  # fmt: skip
            phases.stop()
        for seed, summary in zip(distill_seeds, summaries, strict=False):
            phases.start(f"{learner}: learners on summary seed {seed}")
            rows = evaluation_rows(bench, ["summary"], summary=summary, users=users,
                                   length=length, seeds=learner_seeds, lrs=job.search_lrs,
                                   alt=job.distill.alt, learner=learner,
                                   objectives=job.summary_objectives,
                                   teacher_item_embeddings=leaky)  # fmt: skip
            phases.stop()
            for row, records in rows.items():
                for record in records:
                    record["distill_seed"] = seed
                runs.setdefault(row_names.get(row, row), []).extend(records)
        all_runs[learner] = runs
        tables[learner] = {name: aggregate(group) for name, group in runs.items() if group}

    return {
        "dataset": args.dataset,
        "dataset_stats": dataset.stats().as_dict(),
        "split": {"train": len(split.train), "valid": len(split.valid), "test": len(split.test)},
        "config": job.model_dump(mode="json"),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "teacher": {
            "valid_mrr10": teacher.fit.best_metric,
            "steps": teacher.fit.steps,
            "stop_reason": teacher.fit.stop_reason,
            "pool_epochs": teacher.pool_epochs,
            "lr": teacher.lr,
            "lr_search": teacher.lr_search,
        },
        "distillations": distillations,
        "runs": all_runs,
        "tables": tables,
        "phases": phases.records,
        "paper": {name: {m: list(v) for m, v in row.items()} for name, row in spec.paper.items()},
        "paper_note": spec.paper_note,
        "markdown": "\n\n".join(
            markdown(learner, table, spec, job) for learner, table in tables.items()
        )
        + "\n\n"
        + phases_markdown(phases.records),
    }


# ------------------------------------------------------------------- tables
def cell(stats: dict | None) -> str:
    if stats is None:
        return "-"
    return f"{stats['mean']:.2f} ± {stats['std']:.2f}"


def paper_cell(value: tuple[float, float] | None) -> str:
    return "-" if value is None else f"{value[0]:.2f} ± {value[1]:.2f}"


def markdown(learner: str, table: dict, spec: DatasetSpec, job: JobConfig) -> str:
    d = job.distill
    head = (
        f"**{learner}** — [{d.users}x{d.length}], epochs {d.epochs}, inner steps "
        f"{d.inner_steps}, window {d.window}, rank {d.rank}, real batch {d.real_batch}, "
        f"learner steps <= {job.learner.max_steps}, teacher/baseline steps <= "
        f"{job.teacher.max_steps}, lr search {job.search_lrs}"
    )
    cols = [f"ours uni100 {m}" for m in METRICS] + [f"ours full {m}" for m in METRICS]
    cols += [f"PAPER uni100 {m}" for m in METRICS] + ["runs", "interactions", "lr chosen"]
    lines = [head, "", "| row | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name in (*LABELS, *sorted(set(table) - set(LABELS))):
        row = table.get(name)
        # the paper's numbers are SASRec's (the distillation's own learner)
        paper = spec.paper.get(name, {}) if learner == "sasrec" else {}
        if row is None and not paper:
            continue
        ours = [cell(row["uni100"][m]) if row else "-" for m in METRICS]
        ours += [cell(row["full"][m]) if row else "-" for m in METRICS]
        theirs = [paper_cell(paper.get(m)) for m in METRICS]
        extra = (
            [str(row["runs"]), f"{row['interactions']:.0f}", chosen_lrs(row["lr"])]
            if row
            else ["-", "-", "-"]
        )
        lines.append(f"| {LABELS.get(name, name)} | " + " | ".join(ours + theirs + extra) + " |")
    lines += ["", f"PAPER columns: {spec.paper_note}; the paper reports uni100 only."]
    return "\n".join(lines)


def chosen_lrs(lrs: list[float]) -> str:
    """The search's choices over a row's runs, e.g. "0.005 x2, 0.001"."""
    counts: dict[float, int] = {}
    for lr in lrs:
        counts[lr] = counts.get(lr, 0) + 1
    return ", ".join(f"{lr:g}" + (f" x{n}" if n > 1 else "") for lr, n in counts.items())


def phases_markdown(phases: dict) -> str:
    lines = ["| phase | wall s | peak memory MB |", "|---|---|---|"]
    for name, rec in phases.items():
        lines.append(f"| {name} | {rec['seconds']:.1f} | {rec['peak_memory_mb']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    result = run(args)
    result["total_seconds"] = time.perf_counter() - started
    print(result["markdown"])
    print(f"\ntotal wall time: {result['total_seconds']:.0f} s")
    if result["distillations"]:
        best = [(i["seed"], i["best_epoch"], round(i["best_valid_mrr10"], 2))
                for i in result["distillations"]]  # fmt: skip
        print(f"distillation (seed, best epoch, valid MRR@10): {best}")
        for learner, table in result["tables"].items():
            td3, full = table.get("td3"), table.get("full")
            if td3 and full:
                gap = {m: td3["uni100"][m]["mean"] - full["uni100"][m]["mean"] for m in METRICS}
                print(f"{learner}: TD3 (honest) - full data, uni100: " +
                      ", ".join(f"{m} {v:+.2f}" for m, v in gap.items()))  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
