"""The reward TRL calls, on the tokens the policy sampled; the record of every completion; the KL probe.

TRL 1.16 calls a reward function as ``f(prompts=, completions=, completion_ids=, trainer_state=,
log_metric=, **columns)`` once per generation batch. :class:`Scorer` is that function:

- **reward model / ensemble**: the scores of ``prompt_ids ⊕ completion_ids`` exactly as sampled (prompt
  rendered with the assistant turn opened, completion up to and including its stop token), read at the
  last real token with explicit position ids (:meth:`stages.lib.rewards.RewardModel.score_ids`). That is
  the sequence :func:`stages.lib.chat.split_prompt_completion` gives the reward stage for training. TRL's
  own reward-model path would instead re-render prompt + decoded completion through the chat template
  (our template then appends a newline after ``<|end|>``, and decoded text need not re-tokenise to the
  sampled ids), so its head would read another token than the one it was trained on;
- **gold judge** (``reward: synthetic``): :func:`stages.lib.rewards.gold_rewards` of each row's family.

With a ``family`` column the gold reward is computed beside any proxy reward and reported through TRL's
``log_metric`` (``gold_reward`` next to TRL's ``reward`` at every logging step). Every completion is written
to a :class:`RolloutStore` under the resume folder as it is scored. On the generation batches the monitor
asks for (one per ``eval_steps`` window), :class:`KlProbe` measures KL(π‖π_ref) per sequence.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUMMARY_FIELDS = ("n", "proxy_sum", "gold_n", "gold_sum", "kl_n", "kl_sum")


@dataclass
class BatchSummary:
    """Sums over one generation batch (of one process), enough for window means across processes."""

    step: int
    n: int = 0
    proxy_sum: float = 0.0
    gold_n: int = 0
    gold_sum: float = 0.0
    kl_n: int = 0
    kl_sum: float = 0.0

    def as_list(self) -> list[float]:
        return [float(getattr(self, f)) for f in SUMMARY_FIELDS]


class RolloutStore:
    """Every scored completion of the run, one parquet file per generation batch and process under
    ``folder/rank-R/``, written at each checkpoint, so a resumed run finds the batches up to its checkpoint
    (and drops any later ones: it samples them again)."""

    def __init__(self, folder: Path, rank: int = 0) -> None:
        self.folder = Path(folder)
        self.mine = self.folder / f"rank-{rank}"
        self.mine.mkdir(parents=True, exist_ok=True)
        self.summaries: dict[int, BatchSummary] = {}
        self.pending: dict[int, list[dict[str, Any]]] = {}
        for path in sorted(self.mine.glob("step-*.parquet")):
            self.summaries[_step_of(path)] = _summarise(_read(path), _step_of(path))

    def add(self, step: int, rows: list[dict[str, Any]]) -> BatchSummary:
        """Keep one generation batch's rows (written by :meth:`flush`); returns its summary."""
        self.pending[step] = rows
        summary = _summarise(rows, step)
        self.summaries[step] = summary
        return summary

    def flush(self) -> None:
        """Write the batches kept since the last flush (called at each checkpoint and at the end, so what
        a resumed run keeps is on disk and no step pays for a write)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        for step, rows in sorted(self.pending.items()):
            path = self.mine / f"step-{step:08d}.parquet"
            tmp = path.with_suffix(".tmp")
            pq.write_table(pa.Table.from_pylist(rows), tmp)
            tmp.replace(path)  # a batch is on disk whole or not at all
        self.pending.clear()

    def truncate(self, last_step: int) -> None:
        """Forget the batches of steps after ``last_step`` (a resumed run samples them again)."""
        for path in self.mine.glob("step-*.parquet"):
            if _step_of(path) > last_step:
                path.unlink()
        self.summaries = {k: v for k, v in self.summaries.items() if k <= last_step}
        self.pending = {k: v for k, v in self.pending.items() if k <= last_step}

    def rows(self) -> list[dict[str, Any]]:
        """Every process's rows, by step then process (after :meth:`flush` on every process)."""
        paths = sorted(self.folder.glob("rank-*/step-*.parquet"), key=lambda p: (_step_of(p), p.parent.name))
        return [row for path in paths for row in _read(path)]


def _step_of(path: Path) -> int:
    return int(path.stem.split("-")[1])


def _read(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def _summarise(rows: list[dict[str, Any]], step: int) -> BatchSummary:
    s = BatchSummary(step=step, n=len(rows), proxy_sum=sum(float(r["reward"]) for r in rows))
    gold = [float(r["gold_reward"]) for r in rows if r.get("gold_reward") is not None]
    kl = [float(r["kl"]) for r in rows if r.get("kl") is not None]
    s.gold_n, s.gold_sum, s.kl_n, s.kl_sum = len(gold), sum(gold), len(kl), sum(kl)
    return s


class KlProbe:
    """KL(π_θ‖π_ref) per sequence, Σ_t [log π_θ(y_t|…) − log π_ref(y_t|…)] over the completion's tokens (seed
    §4.4, the per-sequence KL), on completions sampled from π_θ, so its mean estimates the KL in nats per
    sequence. Log-probs are of softmax(logits / T) at the sampling temperature, with explicit position ids.

    ``reference()`` is a context manager giving the model to score the reference with: a frozen copy, TRL's
    own reference model, or the policy itself with its LoRA adapter disabled (or its "ref" adapter active).
    """

    def __init__(
        self,
        reference: Callable[[], AbstractContextManager[Any]],
        *,
        temperature: float,
        pad_id: int,
        batch_size: int,
    ) -> None:
        self.reference = reference
        self.temperature = temperature
        self.pad_id = pad_id
        self.batch_size = batch_size

    def measure(
        self, policy: Any, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]]
    ) -> list[float]:
        import torch

        out: list[float] = []
        for start in range(0, len(prompts), self.batch_size):
            p, c = prompts[start : start + self.batch_size], completions[start : start + self.batch_size]
            with torch.no_grad():
                pol = _completion_logprobs(policy, p, c, self.pad_id, self.temperature)
                with self.reference() as ref_model:
                    ref = _completion_logprobs(ref_model, p, c, self.pad_id, self.temperature)
            out += [float(x) for x in (pol - ref).sum(dim=1).cpu()]
        return out


def _completion_logprobs(
    model: Any,
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    pad_id: int,
    temperature: float,
) -> Any:
    """[B, C] log-probs of each completion's tokens given its prompt (0 after the completion's end)."""
    import torch

    from stages.lib.generation import left_pad, right_pad
    from stages.lib.logprobs import token_logprobs

    device = next(model.parameters()).device
    p_ids, p_mask = left_pad(prompts, pad_id)
    c_ids, c_mask = right_pad(completions, pad_id)
    ids = torch.cat([p_ids, c_ids], dim=1).to(device)
    mask = torch.cat([p_mask, c_mask], dim=1).to(device)
    logp, _ = token_logprobs(model, ids, mask, response_start=p_ids.shape[1], temperature=temperature)
    return logp


@dataclass
class ScoringSetup:
    """What :class:`Scorer` needs besides the trainer."""

    tok: Any
    store: RolloutStore
    reward_model: Any = None
    """A :class:`stages.lib.rewards.RewardModel`, or None for the gold judge as the reward."""
    kl_probe: KlProbe | None = None
    eval_steps: int | None = None
    span: int = 1
    """Optimizer steps one generation batch serves (TRL's num_iterations)."""
    stop_ids: tuple[int, ...] = ()
    batch_size: int = 16
    prompt_ids: list[list[int]] | None = None
    """Token ids of each dataset row's prompt (by ``prompt_index``), tokenised once before training."""


class Scorer:
    """The reward function TRL calls (see the module docstring); ``__name__`` names it in TRL's logs."""

    def __init__(self, setup: ScoringSetup) -> None:
        self.setup = setup
        self.__name__ = "gold_judge" if setup.reward_model is None else "reward_model"
        self.policy: Any = None
        """The model being trained (set once the trainer exists), for the KL probe."""
        self.last: BatchSummary | None = None

    def bind(self, policy: Any) -> None:
        self.policy = policy

    def kl_due(self, step: int) -> bool:
        """Measure on the first batch and on the batch of the last step of each eval_steps window."""
        s = self.setup
        if s.kl_probe is None or s.eval_steps is None:
            return False
        covered = range(step, step + s.span)
        return step == 1 or any(k % s.eval_steps == 0 for k in covered)

    def __call__(
        self,
        prompts: list[Any],
        completions: list[Any],
        completion_ids: list[list[int]] | None = None,
        trainer_state: Any = None,
        log_metric: Callable[[str, float], None] | None = None,
        family: list[str] | None = None,
        prompt_index: list[int] | None = None,
        **_: Any,
    ) -> list[float]:
        from stages.lib.reinforce.inputs import prompt_ids
        from stages.lib.rewards import gold_rewards

        s = self.setup
        step = int(getattr(trainer_state, "global_step", 0)) + 1
        if completion_ids is None:
            raise ValueError("the reward function needs TRL's completion_ids (TRL >= 1.0 passes them)")
        if prompt_index is not None and s.prompt_ids is not None:
            p_ids = [s.prompt_ids[i] for i in prompt_index]
        else:
            p_ids = [prompt_ids(s.tok, p) for p in prompts]
        gold = gold_rewards(family, prompts, completions) if family is not None else None
        members: list[list[float]] | None = None
        if s.reward_model is None:
            if gold is None:
                raise ValueError("reward: synthetic needs each row's family")
            proxy = list(gold)
        else:
            proxy, members = self._score(p_ids, completion_ids)
        kl = None
        if self.kl_due(step) and self.policy is not None:
            kl = s.kl_probe.measure(self.policy, p_ids, completion_ids)  # type: ignore[union-attr]
        rows = []
        for i, (prompt, completion, ids) in enumerate(zip(prompts, completions, completion_ids, strict=True)):
            rows.append(
                {
                    "step": step,
                    "prompt_index": None if prompt_index is None else int(prompt_index[i]),
                    "prompt": prompt,
                    "completion": completion,
                    "family": family[i] if family is not None else None,
                    "reward": float(proxy[i]),
                    "gold_reward": None if gold is None else float(gold[i]),
                    "reward_members": None if members is None else [float(m[i]) for m in members],
                    "completion_ids": [int(t) for t in ids],
                    "completion_tokens": len(ids),
                    "truncated": not ids or ids[-1] not in s.stop_ids,
                    "kl": None if kl is None else kl[i],
                }
            )
        self.last = s.store.add(step, rows)
        if log_metric is not None:
            if gold is not None:
                log_metric("gold_reward", sum(gold) / len(gold))
            if kl is not None:
                log_metric("kl_per_sequence", sum(kl) / len(kl))
        return [float(x) for x in proxy]

    def _score(self, p_ids: list[list[int]], c_ids: list[list[int]]) -> tuple[list[float], list[list[float]]]:
        from stages.lib.generation import right_pad

        rm = self.setup.reward_model
        device = next(rm.members[0].parameters()).device
        pad = self.setup.tok.pad_token_id if self.setup.tok.pad_token_id is not None else 0
        agg: list[float] = []
        per: list[list[float]] = [[] for _ in rm.members]
        size = self.setup.batch_size
        for start in range(0, len(p_ids), size):
            seqs = [
                p + c for p, c in zip(p_ids[start : start + size], c_ids[start : start + size], strict=True)
            ]
            ids, mask = right_pad(seqs, pad)
            a, each = rm.score_ids(ids.to(device), mask.to(device))
            agg += [float(x) for x in a.cpu()]
            for k in range(len(rm.members)):
                per[k] += [float(x) for x in each[k].cpu()]
        bad = [i for i, x in enumerate(agg) if not math.isfinite(x)]
        if bad:
            raise ValueError(
                f"the reward model scored {len(bad)} completion(s) as non-finite (first: row {bad[0]})"
            )
        return agg, per
