"""stages.lib.checkpoints: the one checkpoint saver. Due every K steps; a checkpoint appears only complete
(written as .partial, renamed); a finished one is not written twice (a resumed run); revisions come back in
step order with their metrics; other processes write nothing; the TrainerCallback form saves on_step_end."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from stages.lib.checkpoints import CheckpointWriter, trainer_callback
from stages.lib.testing import stage_context


def _cfg(every: int | None, output: str = "output") -> SimpleNamespace:
    spec = SimpleNamespace(every=every) if every else None
    return SimpleNamespace(checkpoints=spec, CHECKPOINT_OUTPUT=output)


def _write(text: str):
    def write(folder: Path) -> None:
        (folder / "model.safetensors").write_text(text)
        (folder / "tokenizer.json").write_text("{}")

    return write


def test_due_save_once_and_revisions_in_order(tmp_path):
    ctx = stage_context(tmp_path, {})
    off = CheckpointWriter(ctx, _cfg(None), main=True)
    assert not off.enabled and not off.due(10) and off.revisions() == []

    writer = CheckpointWriter(ctx, _cfg(5, "policy"), main=True)
    assert [s for s in range(0, 16) if writer.due(s)] == [5, 10, 15]
    (writer.root / "step-15.partial").mkdir(parents=True)  # a crash while writing step 15
    for step in (10, 5):
        writer.save(step, _write(f"weights {step}"), {"loss": 1.0 / step, "note": "x", "bad": [1]})
    assert writer.save(5, _write("never"), {}) == writer.folder(5)  # finished: not written again
    assert (writer.folder(5) / "model.safetensors").read_text() == "weights 5"

    revs = CheckpointWriter(ctx, _cfg(5, "policy"), main=True).revisions()  # a resumed run lists them,
    # not the half-written step-15
    assert [(r.label, r.output) for r in revs] == [("step-5", "policy"), ("step-10", "policy")]
    assert revs[0].metrics == {"step": 5, "loss": 0.2, "note": "x"}  # plain values only
    assert revs[0].folder == ctx.resume_dir / "revisions" / "step-5"

    with pytest.raises(RuntimeError, match="wrote no file for step 20"):
        writer.save(20, lambda folder: None)
    assert not writer.folder(20).exists()

    other = CheckpointWriter(ctx, _cfg(5), main=False)  # a DDP rank other than 0
    assert other.save(25, _write("no")) is None and not other.folder(25).exists() and other.revisions() == []


def test_the_trainer_callback_saves_after_every_kth_step(tmp_path):
    pytest.importorskip("transformers")
    ctx = stage_context(tmp_path, {})
    writer = CheckpointWriter(ctx, _cfg(2), main=True)
    seen: list[int] = []
    callback = trainer_callback(writer, _write("w"), lambda step: seen.append(step) or {"loss": 0.5})
    for step in (1, 2, 3, 4):
        state = SimpleNamespace(global_step=step, is_world_process_zero=True)
        callback.on_step_end(None, state, SimpleNamespace())
    assert [r.label for r in writer.revisions()] == ["step-2", "step-4"] and seen == [2, 4]
    assert writer.revisions()[1].metrics == {"step": 4, "loss": 0.5}
