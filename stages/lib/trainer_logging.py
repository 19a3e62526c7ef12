"""Progress of a transformers / TRL ``Trainer`` in a stage: one compact line per logged step.

A Trainer with tqdm disabled prints every log as a Python dict (its ``PrinterCallback``); a stage instead
forwards its logs to ``ctx.log_metrics(step, total=..., **values)``, which records the training curve and
prints ``step 40/450 · loss 1.2345 · 3.1 steps/s · 2m10s left``. Every kind that drives a Trainer calls
:func:`quiet_printer` and forwards its logs with :func:`metrics_callback` (or a callback of its own that
calls ``ctx.log_metrics``).
"""

from __future__ import annotations

from typing import Any


def quiet_printer(trainer: Any) -> None:
    """Remove the Trainer's dict printer and its tqdm bar (the stage prints progress lines itself)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


def metrics_callback(ctx: Any) -> Any:
    """A TrainerCallback sending each log (its numbers) to ``ctx.log_metrics`` on the main process."""
    from transformers import TrainerCallback

    class Forward(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if state.is_world_process_zero and logs:
                values = {
                    k: v for k, v in logs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                }
                ctx.log_metrics(step=state.global_step, total=state.max_steps or None, **values)

    return Forward()
