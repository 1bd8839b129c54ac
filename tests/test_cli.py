"""The library commands of the `td3` console script on tiny synthetic data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from td3.cli import main
from td3core.config import DistillConfig
from td3core.data import generate_interactions, write_interactions_csv
from td3core.serialization import read_metadata
from td3core.summary import FarziSummary, load_summary

# The tiny catalogue has fewer than 100 items: negatives are padded (and masked).
pytestmark = pytest.mark.filterwarnings("ignore:.*fewer than 100 unseen items")

TINY = [
    "--users", "4", "--length", "8", "--epochs", "1", "--inner-steps", "4", "--window", "2",
    "--teacher-steps", "40", "--learner-steps", "10", "--select-steps", "5",
    "--device", "cpu", "--quiet",
]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    inter = generate_interactions(n_users=60, n_items=40, mean_length=12, seed=3)
    return write_interactions_csv(inter, tmp_path_factory.mktemp("data") / "log.csv")


@pytest.fixture(scope="module")
def distilled(data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One tiny `td3 distill` run shared by the tests: (summary path, report)."""
    folder = tmp_path_factory.mktemp("job")
    out, report = folder / "s.safetensors", folder / "report.json"
    flags = words("--eval summary,random-users --eval-seeds 2 --paper-compatible")
    code = main(["distill", str(data), *TINY, *flags, "--out", str(out), "--report", str(report)])
    assert code == 0
    return out, json.loads(report.read_text())


def words(text: str) -> list[str]:
    return text.split()


def _json(capsys: pytest.CaptureFixture[str]) -> dict:
    return json.loads(capsys.readouterr().out)


def test_distill_writes_a_summary_and_prints_the_table(distilled, capsys):
    out, report = distilled
    stored = load_summary(out)
    assert (stored.summary.users, stored.summary.length) == (4, 8)
    assert stored.config["job"]["distill"]["epochs"] == 1
    assert stored.config["preprocessing"]["kcore"] == "one-pass"
    table = report["evaluation"]
    assert set(table) == {"summary", "summary (paper-compatible)", "random-users"}
    assert table["summary"]["runs"] == 2
    assert report["config"]["learner"]["max_steps"] == 10
    # untouched settings keep the library's defaults
    assert report["config"]["distill"]["rank"] == DistillConfig.model_fields["rank"].default
    assert report["config"]["learner"]["lr"] == 0.005
    # the teacher: the best on validation of the full-data runs at the search's lrs
    assert set(report["teacher"]["lr_search"]) == {"0.001", "0.005"}
    assert report["config"]["distill"]["fsa"] is False


def test_distill_teacher_lr_fixes_the_teacher(data, tmp_path):
    report = tmp_path / "r.json"
    flags = ["--teacher-lr", "0.003", "--eval", "summary", "--eval-seeds", "1"]
    out = tmp_path / "s.safetensors"
    assert (
        main(["distill", str(data), *TINY, *flags, "--out", str(out), "--report", str(report)]) == 0
    )
    document = json.loads(report.read_text())
    assert document["config"]["teacher_search"] is False
    assert document["config"]["teacher"]["lr"] == 0.003
    assert document["teacher"]["lr"] == 0.003 and list(document["teacher"]["lr_search"]) == [
        "0.003"
    ]


def test_evaluate_reproduces_the_jobs_summary_row(data, distilled, capsys):
    out, report = distilled
    capsys.readouterr()
    assert main(["evaluate", str(data), "--summary", str(out), "--device", "cpu", "--quiet"]) == 0
    metrics = _json(capsys)
    for row in ("summary", "summary (paper-compatible)"):
        for key in ("uni100", "full", "valid_mrr10", "steps", "runs"):
            assert metrics[row][key] == report["evaluation"][row][key], (row, key)


def test_evaluate_refuses_other_data(data, distilled, tmp_path, capsys):
    out, _ = distilled
    other = tmp_path / "other.csv"
    other.write_bytes(data.read_bytes() + b"1,1,5,1900000000\n")
    assert main(["evaluate", str(other), "--summary", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "sha256" in err and "--force" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_evaluate_force_on_other_data(data, distilled, tmp_path, capsys):
    out, _ = distilled
    other = tmp_path / "other.csv"
    other.write_bytes(data.read_bytes() + b"1,1,5,1900000000\n")
    capsys.readouterr()
    flags = words("--force --quiet --eval-seeds 1 --device cpu")
    code = main(["evaluate", str(other), "--summary", str(out), *flags])
    assert code == 0
    assert _json(capsys)["summary"]["runs"] == 1


def test_baseline_matches_the_jobs_row(data, distilled, capsys):
    _, report = distilled
    capsys.readouterr()
    flags = words("--method random-users --users 4 --length 8 --seeds 2 --steps 40 --quiet")
    code = main(["baseline", str(data), *flags, "--device", "cpu"])
    assert code == 0
    row = _json(capsys)["random-users"]
    assert row["runs"] == 2
    assert row["uni100"] == report["evaluation"]["random-users"]["uni100"]


@pytest.mark.parametrize("method", ["full", "random-interactions", "longest"])
def test_baseline_methods(data, method, capsys):
    flags = words("--users 4 --length 8 --steps 5 --quiet --device cpu")
    code = main(["baseline", str(data), "--method", method, *flags])
    assert code == 0
    row = _json(capsys)[method]
    assert 0.0 <= row["uni100"]["HR@10"]["mean"] <= 100.0
    assert row["interactions"] > 0


def test_evaluate_and_baseline_train_any_learner_of_the_zoo(data, distilled, capsys):
    out, report = distilled
    capsys.readouterr()
    flags = words("--learner gru4rec --objective kl-all --device cpu --quiet")
    assert main(["evaluate", str(data), "--summary", str(out), *flags]) == 0
    table = _json(capsys)
    # the paper-compatible variant needs the teacher's table shape: not for GRU4Rec
    assert set(table) == {"summary (kl-all)"}
    assert table["summary (kl-all)"]["runs"] == 2
    assert table["summary (kl-all)"]["uni100"] != report["evaluation"]["summary"]["uni100"]
    flags = words("--method longest --users 4 --length 8 --steps 20 --learner narm --quiet")
    assert main(["baseline", str(data), *flags, "--device", "cpu"]) == 0
    assert _json(capsys)["longest"]["interactions"] == 32


def test_distill_reports_a_table_per_learner(data, tmp_path, capsys):
    out, report = tmp_path / "s.safetensors", tmp_path / "r.json"
    flags = words(
        "--eval summary,full --learners sasrec,bert4rec --summary-objectives inner,kl-all"
    )
    code = main(["distill", str(data), *TINY, *flags, "--out", str(out), "--report", str(report)])
    assert code == 0
    document = json.loads(report.read_text())
    tables = document["evaluation_by_learner"]
    assert set(tables) == {"sasrec", "bert4rec"}
    assert document["evaluation"] == tables["sasrec"]
    for table in tables.values():
        assert set(table) == {"summary", "summary (kl-all)", "full"}
        assert all(len(row["lr"]) == row["runs"] for row in table.values())


@pytest.mark.parametrize(
    ("flags", "settings"),
    [
        ("--backend higher", {"backend": "higher", "item_chunk": 16384}),
        ("--item-chunk 8", {"backend": "func", "item_chunk": 8}),  # 40 items: chunked
        ("--real-chunk 16", {"real_chunk": 16}),
        ("--fsa", {"fsa": True}),
        ("--no-fsa", {"fsa": False}),
        ("--inner-objective kl-all", {"inner_objective": "kl-all"}),
        ("--init real --init-confidence 0.7", {"init": "real", "init_confidence": 0.7}),
        ("--init-rows random-users", {"init_rows": "random-users"}),
    ],
)
def test_distill_engine_options_reach_the_job(data, tmp_path, flags, settings):
    out = tmp_path / "s.safetensors"
    extra = [*words(flags), "--eval", "summary", "--eval-seeds", "1"]
    assert main(["distill", str(data), *TINY, *extra, "--out", str(out)]) == 0
    distill = load_summary(out).config["job"]["distill"]
    assert {key: distill[key] for key in settings} == settings


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--window", "8"], "window (8) must not exceed inner_steps (4)"),
        (["--users", "0"], "distill.users"),
        (["--learner-steps", "0"], "learner.max_steps"),
        (["--device", "tpu"], "--device"),
        (["--threads", "0"], "--threads"),
        (["--item-chunk", "0"], "distill.item_chunk"),
        (["--real-chunk", "0"], "distill.real_chunk"),
    ],
)
def test_distill_bad_settings(data, tmp_path, capsys, extra, needle):
    code = main(["distill", str(data), *TINY, *extra, "--out", str(tmp_path / "s.safetensors")])
    assert code == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s.safetensors").exists()


def test_missing_and_malformed_files(tmp_path, capsys):
    missing = tmp_path / "nope.csv"
    flags = words("--method full --users 2 --length 8 --quiet")
    assert main(["baseline", str(missing), *flags]) == 2
    assert "file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,item_id,timestamp\n1,2,3\n1,3,not-a-time\n")
    assert main(["distill", str(bad), *TINY, "--out", str(tmp_path / "s.safetensors")]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "Traceback" not in err
    assert main(["evaluate", str(bad), "--summary", str(missing), "--quiet"]) == 2
    assert "file not found" in capsys.readouterr().err
    assert main(["evaluate", str(bad), "--summary", str(bad), "--quiet"]) == 2
    assert "not a safetensors file" in capsys.readouterr().err


def test_argparse_rejects_bad_choices(data, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["baseline", str(data), "--method", "best", "--users", "2", "--length", "8"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["distill", str(data), *TINY, "--eval", "summary,oracle", "--out", "x"])
    assert exit_info.value.code == 2
    assert "oracle" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["distill", str(data), *TINY, "--learners", "sasrec,caser", "--out", "x"])
    assert exit_info.value.code == 2
    assert "caser" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["distill", str(data), *TINY, "--fsa", "--no-fsa", "--out", "x"])
    assert exit_info.value.code == 2
    assert "not allowed with argument --fsa" in capsys.readouterr().err


def test_console_script_subprocess(data, tmp_path):
    """The installed entry point: JSON on stdout, progress bars on stderr, exit 0."""
    out = tmp_path / "s.safetensors"
    args = [a for a in TINY if a != "--quiet"]
    done = subprocess.run(
        [sys.executable, "-m", "td3", "distill", str(data), *args, "--eval", "summary",
         "--out", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert set(json.loads(done.stdout)) == {"summary"}
    assert "distill" in done.stderr and out.exists()
    bad = subprocess.run(
        [sys.executable, "-m", "td3", "evaluate", str(data), "--summary", str(tmp_path / "x")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_checkpoint_and_resume(data, tmp_path, capsys):
    """--checkpoint writes the job checkpoint; --resume from it gives the same summary."""
    ckpt = tmp_path / "job.ckpt"
    first, second = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    flags = [*TINY, "--eval", "none", "--checkpoint", str(ckpt), "--checkpoint-every", "1"]
    assert main(["distill", str(data), *flags, "--out", str(first)]) == 0
    assert ckpt.exists() and not ckpt.with_name("job.ckpt.partial").exists()
    assert main(["distill", str(data), *flags, "--resume", "--out", str(second)]) == 0
    # (safetensors does not keep the metadata's order, so compare the contents)
    a, b = load_summary(first), load_summary(second)
    assert (a.config, a.item_ids, a.dataset_sha256) == (b.config, b.item_ids, b.dataset_sha256)
    for name in ("G", "U", "T", "V"):
        assert torch.equal(getattr(a.summary, name), getattr(b.summary, name)), name
    assert capsys.readouterr().out.split() == ["{}", "{}"]  # no evaluations asked for
    assert main(["distill", str(data), *TINY, "--resume", "--out", str(second)]) == 2
    assert "--resume needs --checkpoint" in capsys.readouterr().err


def test_distill_and_evaluate_a_farzi_summary(data, tmp_path, capsys):
    out, report = tmp_path / "farzi.safetensors", tmp_path / "r.json"
    flags = words("--method farzi --rank 4 --eval summary")
    code = main(["distill", str(data), *TINY, *flags, "--out", str(out), "--report", str(report)])
    assert code == 0
    stored = load_summary(out)
    assert read_metadata(out.read_bytes())["format"] == "td3-farzi-summary/1"
    assert isinstance(stored.summary, FarziSummary)
    assert tuple(stored.summary.latent.shape) == (4, 8, 4)
    expected = json.loads(report.read_text())["evaluation"]["summary"]
    capsys.readouterr()
    evaluate = ["evaluate", str(data), "--summary", str(out), "--device", "cpu", "--quiet"]
    assert main(evaluate) == 0
    assert _json(capsys)["summary"]["uni100"] == expected["uni100"]
    # the leaky variant starts learners from the teacher's item table: a Farzi file has none
    assert main([*evaluate, "--paper-compatible"]) == 2
    assert "Farzi summary does not hold" in capsys.readouterr().err
