"""Progress on the terminal for the library commands: a tqdm bar per stage on
stderr, and checkpoints written atomically to a file."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from td3core.pipeline import Progress


class CliHooks:
    """A tqdm bar per stage on stderr; checkpoints to a file (atomic rename) if asked."""

    def __init__(self, *, checkpoint: Path | None, every: int, quiet: bool):
        self.checkpoint = checkpoint
        self.checkpoint_every = every if checkpoint is not None else 1_000_000_000
        self.quiet = quiet
        self._bar: Any = None
        self._stage = ""

    def on_progress(self, progress: Progress) -> None:
        if self.quiet:
            return
        from tqdm import tqdm

        if progress.stage != self._stage or self._bar is None:
            self.close()
            self._stage = progress.stage
            self._bar = tqdm(total=progress.total, desc=progress.stage, file=sys.stderr)
        self._bar.total = progress.total
        self._bar.n = progress.step
        shown = {k: round(v, 4) for k, v in progress.losses.items() if k in ("ce", "fsa")}
        if progress.stage == "distill":
            shown["epoch"] = progress.epoch
        self._bar.set_postfix(shown, refresh=False)
        if progress.message and progress.stage == "evaluate":
            self._bar.set_description_str(f"evaluate: {progress.message}", refresh=False)
        self._bar.refresh()

    def should_cancel(self) -> bool:
        return False

    def save_checkpoint(self, blob: bytes) -> None:
        if self.checkpoint is None:
            return
        partial = self.checkpoint.with_name(self.checkpoint.name + ".partial")
        partial.write_bytes(blob)
        os.replace(partial, self.checkpoint)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def run_progress(hooks: CliHooks, total: int) -> Callable[[str, int], None]:
    done = {"runs": 0}

    def on_run(name: str, seed: int) -> None:
        done["runs"] += 1
        message = f"training on {name} (seed {seed})"
        hooks.on_progress(Progress("evaluate", 0, done["runs"], total, {}, None, message))

    return on_run
