"""The library commands of the `td3` console script: distill, evaluate, baseline.

Every command prints one JSON document on stdout; progress goes to stderr. Bad
input (a missing or malformed file, an impossible setting) ends with a one-line
message on stderr and exit status 2, never a traceback. Defaults are those of the
pydantic settings in `td3core.config` (the paper's): an option left out is not
passed on, so the models fill it in.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

from pydantic import ValidationError

from td3core.config import (
    DEFAULT_TORCH_THREADS,
    EVALUATIONS,
    LEARNER_NAMES,
    OBJECTIVES,
    SAMPLERS,
    DistillConfig,
    JobConfig,
)
from td3core.data import FORMATS as READER_FORMATS
from td3core.data.preprocess import Dedup, KCore
from td3core.errors import DataError, TD3Error

EXIT_USAGE = 2
METHODS = ("full", *SAMPLERS)
FORMATS = ("auto", *READER_FORMATS)

Command = Callable[[argparse.Namespace], int]


# ----------------------------------------------------------------------- parser
def register(subparsers: argparse._SubParsersAction) -> None:
    d = subparsers.add_parser(
        "distill",
        help="distill DATA into a TD3 (or Farzi) summary (teacher, distillation, evaluation)",
    )
    _data_options(d)
    add_distill_options(d)
    d.add_argument("--out", required=True, help="where to write the summary (.safetensors)")
    d.add_argument(
        "--eval",
        type=_evaluations,
        help=f"comma-separated evaluations among {', '.join(EVALUATIONS)} "
        "(e.g. 'summary,full'); 'none' for no evaluation",
    )
    d.add_argument("--eval-seeds", type=int, help="learners trained per evaluated data")
    d.add_argument(
        "--paper-compatible",
        action="store_true",
        help="also report learners started from the teacher's item embeddings (leaky)",
    )
    d.add_argument("--report", help="write the whole report (JSON) to this file")
    d.add_argument("--print-report", action="store_true", help="print the whole report")
    d.add_argument("--checkpoint", help="write checkpoints to this file (atomically)")
    d.add_argument("--checkpoint-every", type=int, default=10, help="outer steps between them")
    d.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    d.set_defaults(func=_guarded(_distill))

    e = subparsers.add_parser(
        "evaluate", help="train fresh learners on a summary and score them on DATA"
    )
    _data_options(e, preprocessing=False)
    e.add_argument(
        "--summary",
        required=True,
        help="a td3-summary/1 (or td3-farzi-summary/1) .safetensors file",
    )
    e.add_argument("--eval-seeds", type=int, help="learners to train (default: the job's)")
    e.add_argument("--learner", choices=LEARNER_NAMES, default="sasrec", help=_LEARNER_HELP)
    e.add_argument(
        "--objective", choices=OBJECTIVES, default="inner", help="how to train on the summary"
    )
    e.add_argument("--force", action="store_true", help="evaluate even if DATA's sha256 differs")
    e.add_argument(
        "--paper-compatible",
        action="store_true",
        help="also report learners started from the summary's V (the teacher's item table)",
    )
    e.set_defaults(func=_guarded(_evaluate))

    b = subparsers.add_parser(
        "baseline", help="train on a real budget sample (or the full data) and score it"
    )
    _data_options(b)
    b.add_argument("--method", choices=METHODS, required=True)
    b.add_argument("--users", type=int, required=True, help="mu of the budget")
    b.add_argument("--length", type=int, required=True, help="zeta of the budget and history")
    b.add_argument("--seeds", type=int, default=1, help="sampling and training seeds 0..N-1")
    b.add_argument("--steps", type=int, help="step cap of the training recipe")
    b.add_argument("--search-lrs", type=_floats, help=_SEARCH_HELP)
    b.add_argument("--learner", choices=LEARNER_NAMES, default="sasrec", help=_LEARNER_HELP)
    b.set_defaults(func=_guarded(_baseline))


def add_distill_options(p: argparse.ArgumentParser, *, size_required: bool = True) -> None:
    """The summary's size and the distillation and training settings (shared with
    bench/reproduce.py); unset options keep the defaults of td3core.config."""
    p.add_argument("--users", type=int, required=size_required, help="mu: synthetic users")
    p.add_argument(
        "--length", type=int, required=size_required, help="zeta: synthetic sequence length"
    )
    p.add_argument("--epochs", type=int, help=_doc("epochs", "passes over the real samples"))
    p.add_argument("--seed", type=int, help=_doc("seed", "distillation seed"))
    p.add_argument(
        "--method",
        choices=get_args(DistillConfig.model_fields["method"].annotation),
        help=_doc("method", "the summary: TD3's Tucker factors or Farzi Data's (baseline)"),
    )
    p.add_argument(
        "--rank", type=int, help=_doc("rank", "d1 = d2 of the Tucker core (Farzi: its d)")
    )
    p.add_argument(
        "--inner-steps", type=int, help=_doc("inner_steps", "N: inner steps per outer step")
    )
    p.add_argument("--window", type=int, help=_doc("window", "W: differentiable inner steps"))
    p.add_argument("--temperature", type=float, help=_doc("temperature", "summary softmax"))
    p.add_argument(
        "--init",
        choices=get_args(DistillConfig.model_fields["init"].annotation),
        help=_doc("init", "how the summary starts: random (paper) or fitted to real rows"),
    )
    p.add_argument(
        "--init-confidence",
        type=float,
        help=_doc("init_confidence", "with --init real: each cell's mass on its real item"),
    )
    p.add_argument(
        "--init-rows",
        choices=get_args(DistillConfig.model_fields["init_rows"].annotation),
        help=_doc("init_rows", "with --init real: the real sample the rows come from"),
    )
    p.add_argument("--inner-lr", type=float, help=_doc("inner_lr", "learner Adam lr"))
    p.add_argument("--outer-lr", type=float, help=_doc("outer_lr", "summary Adam lr"))
    p.add_argument(
        "--select-steps",
        type=int,
        help=_doc("select_steps", "learner steps to pick the best epoch"),
    )
    p.add_argument(
        "--inner-objective",
        choices=OBJECTIVES,
        help=_doc("inner_objective", "the inner learner's loss on the summary"),
    )
    p.add_argument("--no-alt", action="store_true", help="no augmented learner training")
    fsa = p.add_mutually_exclusive_group()
    fsa.add_argument(
        "--fsa",
        action="store_true",
        help="feature space alignment in the outer loss (the paper's; off by default)",
    )
    fsa.add_argument("--no-fsa", action="store_true", help="no feature space alignment")
    p.add_argument("--learner-draw", choices=("step", "epoch"))
    p.add_argument(
        "--fresh-learners",
        type=float,
        help=_doc("fresh_learners", "share of inner learners started fresh"),
    )
    p.add_argument(
        "--backend",
        choices=("func", "higher"),
        help=_doc("backend", "inner-loop engine: func (fast) or higher (reference)"),
    )
    p.add_argument(
        "--item-chunk",
        type=int,
        help=_doc("item_chunk", "catalogues larger than this are read in chunks of it"),
    )
    p.add_argument(
        "--real-chunk",
        type=int,
        help=_doc("real_chunk", "real batches larger than this are read in chunks of it"),
    )
    p.add_argument("--teacher-steps", type=int, help="step cap of the real-data recipe")
    p.add_argument(
        "--teacher-lr",
        type=float,
        help="train the teacher (the full-data SASRec run that gives V, the pool and FSA "
        "targets) at this lr only (default: the best of --search-lrs on validation)",
    )
    p.add_argument("--learner-steps", type=int, help="step cap of learners on the summary")
    p.add_argument("--learner-lr", type=float, help="lr of learners on the summary")
    p.add_argument("--search-lrs", type=_floats, help=_SEARCH_HELP)
    p.add_argument(
        "--learners",
        type=_names(LEARNER_NAMES, "learner"),
        help=f"comma-separated learners evaluated on every row, among {', '.join(LEARNER_NAMES)} "
        "(default sasrec)",
    )
    p.add_argument(
        "--summary-objectives",
        type=_names(OBJECTIVES, "objective"),
        help=f"how learners train on the summary, among {', '.join(OBJECTIVES)} (default inner)",
    )


def distill_job_config(args: argparse.Namespace, **job: Any) -> JobConfig:
    """A JobConfig from `add_distill_options` arguments plus other job fields."""
    distill = {
        "users": args.users,
        "length": args.length,
        **_given(
            epochs=args.epochs,
            seed=args.seed,
            method=args.method,
            rank=args.rank,
            inner_steps=args.inner_steps,
            window=args.window,
            temperature=args.temperature,
            init=args.init,
            init_confidence=args.init_confidence,
            init_rows=args.init_rows,
            inner_lr=args.inner_lr,
            outer_lr=args.outer_lr,
            select_steps=args.select_steps,
            learner_draw=args.learner_draw,
            inner_objective=args.inner_objective,
            fresh_learners=args.fresh_learners,
            backend=args.backend,
            item_chunk=args.item_chunk,
            real_chunk=args.real_chunk,
        ),
    }
    if args.no_alt:
        distill["alt"] = False
    if args.fsa or args.no_fsa:
        distill["fsa"] = args.fsa
    return JobConfig.model_validate(
        {
            "distill": distill,
            "teacher": _given(max_steps=args.teacher_steps, lr=args.teacher_lr),
            "learner": _given(max_steps=args.learner_steps, lr=args.learner_lr),
            **({"teacher_search": False} if args.teacher_lr is not None else {}),
            **_given(
                search_lrs=args.search_lrs,
                learners=args.learners,
                summary_objectives=args.summary_objectives,
            ),
            **job,
        }
    )


_DEFAULT_LRS = ",".join(map(str, JobConfig.model_fields["search_lrs"].default))
_SEARCH_HELP = (
    "comma-separated learning rates every evaluated row is trained with; each row keeps "
    f"the best on validation (default {_DEFAULT_LRS})"
)


_LEARNER_HELP = "the model trained (the distillation's SASRec, or one of RecBole's defaults)"


def _names(allowed: tuple[str, ...], what: str) -> Callable[[str], list[str]]:
    """An argparse type: a comma-separated list of names among `allowed`."""

    def parse(value: str) -> list[str]:
        names = [v.strip() for v in value.split(",") if v.strip()]
        unknown = [n for n in names if n not in allowed]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"unknown {what}(s) {', '.join(unknown) or value!r}; "
                f"choose from {', '.join(allowed)}"
            )
        return names

    return parse


def _floats(value: str) -> list[float]:
    try:
        return [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {value!r}"
        ) from None


def _doc(field: str, text: str) -> str:
    """Help text naming the settings' default (the paper's)."""
    return f"{text} (default {DistillConfig.model_fields[field].default})"


def _data_options(p: argparse.ArgumentParser, *, preprocessing: bool = True) -> None:
    p.add_argument("data", metavar="DATA", help="interaction file")
    p.add_argument("--format", choices=FORMATS, help="file format (default: auto / the job's)")
    p.add_argument(
        "--threads",
        type=int,
        default=DEFAULT_TORCH_THREADS,
        help=f"torch CPU threads (default {DEFAULT_TORCH_THREADS}, as the service's workers)",
    )
    # the reader's column mapping (td3core.data.readers.ReaderOptions; unset: its default)
    p.add_argument("--user-col", help="column of the user ids (default user_id)")
    p.add_argument("--item-col", help="column of the item ids (default item_id)")
    p.add_argument(
        "--time-col", help="column of the timestamps (default timestamp; '': file order is time)"
    )
    p.add_argument("--rating-col", help='column of the ratings (default: "rating" if present)')
    p.add_argument("--delimiter", help="field separator of a text file (default: detected)")
    p.add_argument(
        "--columns",
        type=lambda value: tuple(c.strip() for c in value.split(",")),
        help="comma-separated column names of a file without a header",
    )
    p.add_argument(
        "--no-header", action="store_true", help="the first line is data (name it with --columns)"
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    if not preprocessing:
        return
    p.add_argument("--kcore", choices=get_args(KCore))
    p.add_argument("--min-user", type=int)
    p.add_argument("--min-item", type=int)
    p.add_argument("--dedup", choices=get_args(Dedup))
    p.add_argument("--max-len", type=int, help="history length (default: --length)")


def _evaluations(value: str) -> list[str]:
    if value.strip() == "none":
        return []
    return _names(EVALUATIONS, "evaluation")(value)


def _guarded(command: Command) -> Command:
    """Expected failures -> one line on stderr and exit status 2."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
                for err in exc.errors()
            )
            return _fail(f"invalid settings: {problems}")
        except TD3Error as exc:
            return _fail(str(exc))
        except OSError as exc:  # e.g. --out in a missing folder
            where = f"{exc.filename}: " if exc.filename else ""
            return _fail(f"{where}{exc.strerror or exc}")
        except KeyboardInterrupt:
            print("td3: interrupted", file=sys.stderr)
            return 130

    return run


def _fail(message: str) -> int:
    print(f"td3: error: {' '.join(message.split())}", file=sys.stderr)
    return EXIT_USAGE


def _given(**options: Any) -> dict[str, Any]:
    """Options the user set (None = left to the settings' defaults)."""
    return {k: v for k, v in options.items() if v is not None}


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _torch_setup(args: argparse.Namespace) -> str:
    """Set torch's CPU threads and return the checked device."""
    import torch

    if not 1 <= args.threads <= 1024:
        raise TD3Error("--threads must be between 1 and 1024")
    torch.set_num_threads(args.threads)
    device = args.device or _default_device()
    try:
        parsed = torch.device(device)
    except RuntimeError as exc:
        raise TD3Error(f"bad --device {device!r} ({exc})") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise TD3Error(f"--device {device}: CUDA is not available here")
    if parsed.type not in ("cpu", "cuda"):
        raise TD3Error(f"--device {device}: only cpu and cuda are supported")
    return device


def _say(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(message, file=sys.stderr)


def _print_json(document: Any) -> None:
    print(json.dumps(document, indent=2, sort_keys=True))


# ------------------------------------------------------------------- data
def _load_dataset(args: argparse.Namespace, preprocessing: dict[str, Any] | None = None):
    from td3core.data import PreprocessConfig, ReaderOptions, build_dataset, read_interactions

    stored = preprocessing or {}
    fields = PreprocessConfig.model_fields
    settings = {k: v for k, v in stored.items() if k in fields}
    settings.update(
        _given(
            kcore=getattr(args, "kcore", None),
            min_user=getattr(args, "min_user", None),
            min_item=getattr(args, "min_item", None),
            dedup=getattr(args, "dedup", None),
        )
    )
    fmt = args.format or stored.get("format") or "auto"
    reader = _given(
        user_col=args.user_col,
        item_col=args.item_col,
        rating_col=args.rating_col,
        delimiter=args.delimiter,
        columns=args.columns,
        has_header=False if args.no_header else None,
    )
    if args.time_col is not None:
        reader["time_col"] = args.time_col or None
    _say(args, f"reading {args.data} ({fmt})")
    interactions = read_interactions(args.data, ReaderOptions(fmt=fmt, **reader))
    return build_dataset(interactions, PreprocessConfig(**settings))


# --------------------------------------------------------------- commands
def _distill(args: argparse.Namespace) -> int:
    from td3.progress import CliHooks
    from td3core.pipeline import run_job
    from td3core.report import report_json

    device = _torch_setup(args)
    config = distill_job_config(
        args,
        **_given(max_len=args.max_len, evaluations=args.eval, eval_seeds=args.eval_seeds),
        paper_compatible=args.paper_compatible,
    )
    if args.checkpoint_every < 1:
        raise TD3Error("--checkpoint-every must be at least 1")
    checkpoint = Path(args.checkpoint) if args.checkpoint else None
    resume_from = None
    if args.resume:
        if checkpoint is None:
            raise TD3Error("--resume needs --checkpoint FILE")
        if checkpoint.exists():
            resume_from = checkpoint.read_bytes()
            _say(args, f"resuming from {checkpoint}")
    out = Path(args.out)
    if not out.parent.is_dir():
        raise DataError("the folder of --out does not exist", file=str(out))
    dataset = _load_dataset(args)
    hooks = CliHooks(checkpoint=checkpoint, every=args.checkpoint_every, quiet=args.quiet)
    try:
        result = run_job(dataset, config, hooks, device=device, resume_from=resume_from)
    finally:
        hooks.close()
    out.write_bytes(result.summary)
    _say(args, f"summary written to {out}")
    if args.report:
        Path(args.report).write_text(report_json(result.report))
    _print_json(result.report if args.print_report else result.report["evaluation"])
    return 0


def _job_from_summary(config: dict[str, Any]) -> tuple[JobConfig, dict[str, Any] | None]:
    """(job settings, preprocessing) from a summary's `config` metadata: either
    {"job": ..., "preprocessing": ...} or, from older files, the bare job settings."""
    if "job" in config:
        return JobConfig.model_validate(config["job"]), config.get("preprocessing")
    return JobConfig.model_validate(config), None


def _evaluate(args: argparse.Namespace) -> int:
    from td3.progress import CliHooks, run_progress
    from td3core.experiment import Experiment, evaluation_rows, evaluation_table
    from td3core.summary import TuckerSummary, load_summary

    device = _torch_setup(args)
    if not Path(args.summary).is_file():
        raise DataError("file not found", file=args.summary)
    stored = load_summary(args.summary)
    try:
        job, preprocessing = _job_from_summary(stored.config)
    except ValidationError as exc:
        raise DataError(
            f"the summary's job settings are invalid ({exc.error_count()} errors)",
            file=args.summary,
        ) from None
    if args.eval_seeds is not None:
        job = JobConfig.model_validate(job.model_dump() | {"eval_seeds": args.eval_seeds})
    dataset = _load_dataset(args, preprocessing)
    if stored.dataset_sha256 and dataset.source_sha256 != stored.dataset_sha256 and not args.force:
        raise DataError(
            f"sha256 {dataset.source_sha256[:12]}... differs from the summary's "
            f"{stored.dataset_sha256[:12]}... (not the data it was distilled from; "
            "--force to evaluate anyway)",
            file=args.data,
        )
    if dataset.item_ids != stored.item_ids:
        raise DataError(
            f"the items after preprocessing ({dataset.n_items}) are not the summary's "
            f"({len(stored.item_ids) - 1}); check the format and filter options",
            file=args.data,
        )
    experiment = Experiment.for_job(dataset, job, device=device)
    seeds = [job.learner.seed + i for i in range(job.eval_seeds)]
    summary = stored.summary
    # paper-compatible learners start from the teacher's item table: only a Tucker
    # summary carries it (V)
    teacher_items = None
    if args.paper_compatible or job.paper_compatible:
        if isinstance(summary, TuckerSummary):
            teacher_items = summary.V.clone()
        elif args.paper_compatible:
            raise DataError(
                "--paper-compatible needs the teacher's item table, which a Farzi summary "
                "does not hold",
                file=args.summary,
            )
        else:
            _say(args, "no paper-compatible rows: a Farzi summary holds no teacher item table")
    hooks = CliHooks(checkpoint=None, every=1, quiet=args.quiet)
    runs = evaluation_rows(
        experiment,
        ["summary"],
        summary=summary,
        users=summary.users,
        length=summary.length,
        seeds=seeds,
        lrs=job.search_lrs,
        alt=job.distill.alt,
        learner=args.learner,
        objectives=[args.objective],
        teacher_item_embeddings=teacher_items,
        on_run=run_progress(hooks, len(seeds)),
    )
    hooks.close()
    _print_json(evaluation_table(runs))
    return 0


def _baseline(args: argparse.Namespace) -> int:
    from td3.progress import CliHooks, run_progress
    from td3core.experiment import Experiment, evaluation_rows, evaluation_table

    device = _torch_setup(args)
    # The job settings validate the budget and the recipe exactly as for `distill`.
    config = JobConfig.model_validate(
        {
            "distill": {"users": args.users, "length": args.length, "alt": False},
            "teacher": _given(max_steps=args.steps),
            "evaluations": [args.method],
            **_given(max_len=args.max_len, search_lrs=args.search_lrs),
        }
    )
    if not 1 <= args.seeds <= 100:
        raise TD3Error("--seeds must be between 1 and 100")
    dataset = _load_dataset(args)
    experiment = Experiment.for_job(dataset, config, device=device)
    seeds = [config.teacher.seed + i for i in range(args.seeds)]
    hooks = CliHooks(checkpoint=None, every=1, quiet=args.quiet)
    runs = evaluation_rows(
        experiment,
        [args.method],
        summary=None,
        users=args.users,
        length=args.length,
        seeds=seeds,
        lrs=config.search_lrs,
        alt=False,
        learner=args.learner,
        on_run=run_progress(hooks, len(seeds)),
    )
    hooks.close()
    _print_json(evaluation_table(runs))
    return 0
