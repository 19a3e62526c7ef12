"""What a PPO run carries from step to step, and its checkpoints in the resume folder.

A checkpoint ``checkpoints/step-00000040/`` holds everything a resumed run needs to continue bit for bit:
``policy.safetensors`` / ``critic.safetensors`` (the trained weights), ``within.safetensors`` /
``best.safetensors`` (the weight snapshots the KL budget and gold early stopping may publish),
``optimizer.pt`` and ``scheduler.pt`` (state dicts), ``rng.pt`` (the sampling and shuffling generators and
torch's global RNG) and ``state.json`` (the step, the KL controller, the reward moments, the budget and
early-stopping counters). It is written under ``tmp-…`` and renamed into place, so a kill -9 at any moment
leaves the previous checkpoint or the new one. The pickles never leave the resume folder.

Which prompts a step samples is a function of (seed, step) alone (:func:`prompt_rows`), so nothing about
the data position needs saving; ``history.jsonl`` and ``rollouts/step-*.parquet`` are kept up to the
resumed step and the rest dropped.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from functools import cache
from pathlib import Path
from typing import Any

STATE = "state.json"


@cache
def _permutation(seed: int, epoch: int, n: int) -> tuple[int, ...]:
    order = list(range(n))
    random.Random(f"ppo-prompts-{seed}-{epoch}").shuffle(order)
    return tuple(order)


def prompt_rows(step: int, batch: int, n: int, seed: int) -> list[int]:
    """The prompt rows of PPO step ``step`` (1-based): consecutive slices of a fresh permutation per pass."""
    rows = []
    for position in range((step - 1) * batch, step * batch):
        epoch, i = divmod(position, n)
        rows.append(_permutation(seed, epoch, n)[i])
    return rows


class GoldStop:
    """Early stopping on the gold evaluation (seed §4.12 item 3): counts consecutive evaluations below the
    best one by more than ``min_delta``; ``observe`` returns ``best``, ``drop``, ``stop`` or ``ok``."""

    def __init__(self, patience: int, min_delta: float) -> None:
        self.patience, self.min_delta = patience, min_delta
        self.best: float | None = None
        self.best_step: int | None = None
        self.below = 0

    def observe(self, value: float, step: int) -> str:
        if self.best is None or value > self.best:
            self.best, self.best_step, self.below = value, step, 0
            return "best"
        if value < self.best - self.min_delta:
            self.below += 1
            return "stop" if self.below >= self.patience else "drop"
        self.below = 0
        return "ok"

    def sentence(self, step: int) -> str:
        return (
            f"Gold evaluation dropped below its best ({self.best:.3g} at step {self.best_step}) on "
            f"{self.patience} consecutive evaluations up to step {step} (stop_when_gold_drops, seed §4.12 "
            f"item 3): training stopped."
        )

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_step": self.best_step, "below": self.below}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_step, self.below = state["best"], state["best_step"], int(state["below"])


def snapshot(params: dict[str, Any]) -> dict[str, Any]:
    """A CPU copy of named parameters (the weights a stop may publish instead of the last ones)."""
    return {name: p.detach().to("cpu", copy=True).contiguous() for name, p in params.items()}


def restore(params: dict[str, Any], saved: dict[str, Any]) -> None:
    """Copy a :func:`snapshot` back into the parameters."""
    import torch

    missing = sorted(set(params) - set(saved))
    if missing:
        raise RuntimeError(f"snapshot lacks {missing[:3]}")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(saved[name].to(p.device))


class Checkpoints:
    """The latest checkpoint in ``root`` (see the module docstring); one is kept."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def latest(self) -> Path | None:
        if not self.root.is_dir():
            return None
        done = sorted(p for p in self.root.glob("step-*") if (p / STATE).exists())
        return done[-1] if done else None

    def save(
        self,
        step: int,
        tensors: dict[str, dict[str, Any]],
        objects: dict[str, Any],
        state: dict[str, Any],
    ) -> Path:
        import torch
        from safetensors.torch import save_file

        tmp, final = self.root / f"tmp-{step:08d}", self.root / f"step-{step:08d}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name, named in tensors.items():
            if named:
                save_file(
                    {k: v.detach().cpu().contiguous() for k, v in named.items()},
                    str(tmp / f"{name}.safetensors"),
                )
        for name, obj in objects.items():
            torch.save(obj, tmp / f"{name}.pt")
        (tmp / STATE).write_text(json.dumps({**state, "step": step}), encoding="utf-8")
        _fsync_dir(tmp)
        os.replace(tmp, final)
        _fsync_dir(self.root)
        for old in sorted(p for p in self.root.glob("step-*") if p != final):
            trash = old.with_name("old-" + old.name)
            os.replace(old, trash)
            shutil.rmtree(trash, ignore_errors=True)
        return final

    def load(self, path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, Any], dict[str, Any]]:
        """(tensors by file, objects by file, state) of a checkpoint folder."""
        import torch
        from safetensors.torch import load_file

        tensors = {p.stem: load_file(str(p)) for p in path.glob("*.safetensors")}
        objects = {p.stem: torch.load(p, weights_only=True) for p in path.glob("*.pt")}
        return tensors, objects, json.loads((path / STATE).read_text(encoding="utf-8"))


class History:
    """The step records (one JSON line each) in the resume folder; a resume keeps those up to its step."""

    def __init__(self, path: Path, *, keep_until: int) -> None:
        self.path = path
        kept = [r for r in self.records() if r.get("step", 0) <= keep_until]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")

    def records(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [
            json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()
        ]

    def append(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")


class RolloutStore:
    """Each step's rollout rows as ``rollouts/step-NNNNNNNN.parquet`` in the resume folder."""

    def __init__(self, root: Path, *, keep_until: int) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        for path in root.glob("step-*.parquet"):
            if int(path.stem.split("-")[1]) > keep_until:
                path.unlink()

    def write(self, step: int, rows: list[dict[str, Any]]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        tmp = self.root / f"tmp-{step:08d}.parquet"
        pq.write_table(pa.Table.from_pylist(rows), tmp)
        os.replace(tmp, self.root / f"step-{step:08d}.parquet")

    def table(self) -> Any:
        import pyarrow as pa
        import pyarrow.parquet as pq

        files = sorted(self.root.glob("step-*.parquet"))
        return pa.concat_tables([pq.read_table(f) for f in files]) if files else None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
