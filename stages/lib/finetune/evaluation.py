"""Periodic evaluation (seed §3.7 step 3.4): loss on held-out sets and greedy-decoding accuracy.

Runs on the main process, on the unwrapped model, before training (step 0), every
``eval_steps`` steps and after the last step. Loss sets hold encoded rows (the same
masking as training, so a causal-LM loss is the mean NLL of the learned tokens);
generation sets hold chat prompts with their task family, graded by a judge
``score(family, prompt, completion) -> float``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from stages.lib.chat import IGNORE

Scorer = Callable[[str, Any, str], float]


@dataclass
class GenerationItem:
    family: str
    prompt_ids: list[int]
    prompt: str
    """The user's request, as the judge reads it."""


@dataclass
class Evaluator:
    task: str
    loss_sets: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    generation_sets: dict[str, list[GenerationItem]] = field(default_factory=dict)
    scorer: Scorer | None = None
    stop_ids: list[int] = field(default_factory=list)
    pad_id: int = 0
    max_new_tokens: int = 32
    batch_size: int = 8
    decode: Callable[[list[int]], str] | None = None
    """Token ids -> text (the tokenizer's decode, special tokens skipped)."""
    summaries: dict[str, list[str]] = field(default_factory=dict)
    """Name -> set names whose loss / accuracy are averaged (macro mean) into ``<name>_loss`` / ``_accuracy``."""
    history: list[dict[str, Any]] = field(default_factory=list)
    samples: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    """Last evaluation's decoded completions per generation set (a few, for the card)."""

    @property
    def empty(self) -> bool:
        return not self.loss_sets and not self.generation_sets

    def _batches(self, rows: list[dict[str, Any]]) -> Any:
        import torch

        for i in range(0, len(rows), self.batch_size):
            chunk = rows[i : i + self.batch_size]
            width = max(len(r["input_ids"]) for r in chunk)
            ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for j, r in enumerate(chunk):
                n = len(r["input_ids"])
                ids[j, :n] = torch.tensor(r["input_ids"])
                mask[j, :n] = 1
            batch: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
            if self.task == "causal_lm":
                labels = torch.full((len(chunk), width), IGNORE, dtype=torch.long)
                for j, r in enumerate(chunk):
                    labels[j, : len(r["labels"])] = torch.tensor(r["labels"])
                batch["labels"] = labels
            else:
                for key in ("labels", "start_positions", "end_positions"):
                    if key in chunk[0]:
                        batch[key] = torch.tensor([r[key] for r in chunk])
            yield len(chunk), batch

    def loss(self, model: Any, rows: list[dict[str, Any]]) -> float:
        """Token-weighted mean NLL of the learned tokens (causal LM), or the mean per-row head loss."""
        import torch

        device = next(model.parameters()).device
        total = weight = 0.0
        with torch.no_grad():
            for n, batch in self._batches(rows):
                batch = {k: v.to(device) for k, v in batch.items()}
                if self.task == "causal_lm":
                    labels = batch.pop("labels")
                    logits = model(**batch).logits[:, :-1].float()
                    target = labels[:, 1:]
                    nll = torch.nn.functional.cross_entropy(
                        logits.reshape(-1, logits.shape[-1]),
                        target.reshape(-1),
                        ignore_index=IGNORE,
                        reduction="sum",
                    )
                    total += float(nll)
                    weight += float((target != IGNORE).sum())
                else:
                    total += float(model(**batch).loss) * n
                    weight += n
        return total / weight if weight else float("nan")

    def generate(self, model: Any, items: list[GenerationItem]) -> list[str]:
        import torch

        device = next(model.parameters()).device
        out = []
        with torch.no_grad():
            for item in items:
                ids = torch.tensor([item.prompt_ids], device=device)
                gen = model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=self.max_new_tokens,
                    do_sample=False,
                    eos_token_id=self.stop_ids or None,
                    pad_token_id=self.pad_id,
                )
                new = [t for t in gen[0, ids.shape[1] :].tolist() if t not in self.stop_ids]
                out.append(self.decode(new) if self.decode else str(new))
        return out

    def run(self, model: Any, step: int) -> dict[str, float]:
        """Evaluate every set; returns {"<set>_loss": ..., "<set>_accuracy": ...} and records it."""
        was_training = model.training
        model.eval()
        record: dict[str, float] = {}
        for name, rows in self.loss_sets.items():
            record[f"{name}_loss"] = round(self.loss(model, rows), 6)
        if self.scorer is not None:
            for name, items in self.generation_sets.items():
                completions = self.generate(model, items)
                scores = [
                    self.scorer(it.family, it.prompt, c) for it, c in zip(items, completions, strict=True)
                ]
                record[f"{name}_accuracy"] = round(sum(scores) / len(scores), 6) if scores else float("nan")
                self.samples[name] = [
                    {"prompt": it.prompt, "completion": c}
                    for it, c in list(zip(items, completions, strict=True))[:2]
                ]
        for name, sets in self.summaries.items():
            for metric in ("loss", "accuracy"):
                values = [record[f"{s}_{metric}"] for s in sets if f"{s}_{metric}" in record]
                values = [v for v in values if v == v]  # drop NaN
                if values:
                    record[f"{name}_{metric}"] = round(sum(values) / len(values), 6)
        model.train(was_training)
        self.history.append({"step": step, **record})
        return record


def evaluation_callback(evaluator: Evaluator, every: int | None, log: Callable[..., None]) -> Any:
    """A TrainerCallback running ``evaluator`` at step 0, every ``every`` steps and at the end (main process)."""
    from transformers import TrainerCallback

    class EvalCallback(TrainerCallback):
        done: set[int] = set()

        def _maybe(self, state: Any, model: Any) -> None:
            if not state.is_world_process_zero or state.global_step in self.done or model is None:
                return
            self.done.add(state.global_step)
            record = evaluator.run(model, state.global_step)
            log(step=state.global_step, **{f"eval/{k}": v for k, v in record.items()})

        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            self.done = set()
            self._maybe(state, model)

        def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            if every and state.global_step % every == 0:
                self._maybe(state, model)

        def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            self._maybe(state, model)

    return EvalCallback()
