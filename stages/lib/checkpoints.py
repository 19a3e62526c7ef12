"""Checkpoints as revisions: the one saver of every training kind with ``checkpoints: {every: K}``.

A kind's loop asks :meth:`CheckpointWriter.due` after each optimizer step and, when it is due, calls
:meth:`CheckpointWriter.save` with a function that writes the SAME files the stage's final output holds
(the kind's own "save the output" function: the model or adapter, the tokenizer) into a folder. The
writer puts that folder under ``ctx.resume_dir/revisions/step-N`` (written as ``step-N.partial`` and
renamed once complete, so a crash never leaves half a checkpoint), and :meth:`CheckpointWriter.revisions`
returns every finished one as a :class:`hubflow.stage.Revision` labelled ``step-N``; the runner commits
them, in order, to the output repo's ``checkpoints`` branch tagged ``step-N-<fingerprint[:12]>`` before
the final commit on ``main``.

The resume folder survives a failed run of the same fingerprint, so the checkpoints a crashed run
published stay and a resumed run does not write them again. Only the main process writes (under DDP
every process may call ``save``: the others return at once). :func:`trainer_callback` is the
transformers / TRL ``TrainerCallback`` form, for kinds that train through a ``Trainer``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hubflow.stage import SINGLE_OUTPUT, Revision, StageContext
from stages.lib.training import CHECKPOINT_LABEL, checkpoint_label

ROOT = "revisions"
"""The folder under ``ctx.resume_dir`` holding the finished checkpoints."""
METRICS_SUFFIX = ".metrics.json"


def _is_main() -> bool:
    return os.environ.get("RANK", "0") == "0"


class CheckpointWriter:
    """Writes a stage's checkpoints under its resume folder and lists them as revisions."""

    def __init__(self, ctx: StageContext, cfg: Any, *, main: bool | None = None) -> None:
        spec = getattr(cfg, "checkpoints", None)
        self.every: int | None = spec.every if spec is not None else None
        self.output: str = getattr(cfg, "CHECKPOINT_OUTPUT", SINGLE_OUTPUT)
        self.root = Path(ctx.resume_dir) / ROOT
        self.main = _is_main() if main is None else main
        self.logger = ctx.logger

    @property
    def enabled(self) -> bool:
        return self.every is not None

    def due(self, step: int) -> bool:
        """Whether a checkpoint is published after optimizer step ``step``."""
        return self.every is not None and step > 0 and step % self.every == 0

    def folder(self, step: int) -> Path:
        return self.root / checkpoint_label(step)

    def save(
        self, step: int, write: Callable[[Path], Any], metrics: dict[str, Any] | None = None
    ) -> Path | None:
        """Write checkpoint ``step`` with ``write(folder)`` (a no-op off the main process, or when a
        previous attempt of this fingerprint already finished it); returns its folder."""
        if not self.main:
            return None
        final = self.folder(step)
        if final.is_dir():
            return final
        partial = final.with_name(final.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        write(partial)
        if not any(p.is_file() for p in partial.rglob("*")):
            raise RuntimeError(f"the checkpoint writer wrote no file for step {step}")
        values = {k: v for k, v in (metrics or {}).items() if _plain(v)}
        (self.root / f"{final.name}{METRICS_SUFFIX}").write_text(
            json.dumps({"step": step, **values}, sort_keys=True), encoding="utf-8"
        )
        os.replace(partial, final)
        self.logger.info("checkpoint %s written (published as a revision when the stage ends)", final.name)
        return final

    def revisions(self) -> list[Revision]:
        """Every finished checkpoint, in step order, as revisions of the checkpointed output."""
        if not self.main or not self.root.is_dir():
            return []
        found: list[tuple[int, Path]] = []
        for path in self.root.iterdir():
            m = CHECKPOINT_LABEL.match(path.name)
            if m and path.is_dir():
                found.append((int(m[1]), path))
        out = []
        for step, path in sorted(found):
            side = self.root / f"{path.name}{METRICS_SUFFIX}"
            metrics = json.loads(side.read_text(encoding="utf-8")) if side.is_file() else {"step": step}
            out.append(Revision(output=self.output, label=path.name, folder=path, metrics=metrics))
        return out


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def trainer_callback(
    writer: CheckpointWriter,
    write: Callable[[Path], Any],
    metrics: Callable[[int], dict[str, Any]] | None = None,
) -> Any:
    """A ``TrainerCallback`` publishing a checkpoint after every ``writer.every``-th optimizer step
    (``on_step_end``: the weights after that update), with ``metrics(step)`` (e.g. the last logged loss)."""
    from transformers import TrainerCallback

    class PublishCheckpoints(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
            if writer.due(state.global_step) and state.is_world_process_zero:
                writer.save(state.global_step, write, metrics(state.global_step) if metrics else None)
            return control

    return PublishCheckpoints()
