"""Checkpoints in the resume folder: everything a resumed run needs to continue bit for bit.

``checkpoints/step-00000040/`` holds ``model.safetensors`` (weights), ``optimizer.pt``
and ``scheduler.pt`` (their state dicts), ``rng-{rank}.pt`` (each process's torch /
numpy / python RNG states) and ``state.json`` (the step, hence the data position:
the next example is ``step × batch × grad_accum × processes``). A checkpoint is
written under ``tmp-…`` and renamed into place once complete, so a kill -9 at any
moment leaves either the previous checkpoint or the new one. The pickles here never
leave the resume folder; the published model is safetensors only.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

STATE = "state.json"


class Checkpoints:
    def __init__(self, root: Path, keep: int = 1) -> None:
        self.root = root
        self.keep = keep

    def latest(self) -> Path | None:
        if not self.root.is_dir():
            return None
        done = sorted(p for p in self.root.glob("step-*") if (p / STATE).exists())
        return done[-1] if done else None

    def save(
        self, acc: Any, step: int, model: Any, optimizer: Any, scheduler: Any, state: dict[str, Any]
    ) -> Path:
        """Collective: every process calls it (each writes its RNG state)."""
        import numpy as np
        import torch
        from safetensors.torch import save_model

        tmp = self.root / f"tmp-{step:08d}"
        final = self.root / f"step-{step:08d}"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, tmp / f"rng-{acc.process_index}.pt")
        if acc.is_main_process:
            save_model(acc.unwrap_model(model), str(tmp / "model.safetensors"))
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            (tmp / STATE).write_text(json.dumps({**state, "step": step}), encoding="utf-8")
        acc.wait_for_everyone()
        if acc.is_main_process:
            _fsync_dir(tmp)
            os.replace(tmp, final)
            _fsync_dir(self.root)
            olds = sorted(p for p in self.root.glob("step-*") if p != final)
            for old in olds[: max(0, len(olds) - (self.keep - 1))]:
                trash = old.with_name("old-" + old.name)
                os.replace(old, trash)
                shutil.rmtree(trash, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def load(self, path: Path, acc: Any, model: Any, optimizer: Any, scheduler: Any) -> dict[str, Any]:
        import numpy as np
        import torch
        from safetensors.torch import load_model

        state = json.loads((path / STATE).read_text(encoding="utf-8"))
        load_model(acc.unwrap_model(model), str(path / "model.safetensors"), device=str(acc.device))
        optimizer.load_state_dict(
            torch.load(path / "optimizer.pt", map_location=acc.device, weights_only=True)
        )
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        rng = torch.load(path / f"rng-{acc.process_index}.pt", weights_only=False)
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        return state


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
