"""The rounds of online DPO (seed §4.10), each saved complete in the resume folder, resumable.

    REPEAT for R rounds:
      1. draw prompts from D_prompts            (prompts_per_round, a seeded draw per round)
      2. generate K responses with the current π_θ
      3. score / rank them (reward model, ensemble, gold judge)
      4. build fresh pairs (best vs worst; SPIN: gold vs own generation)
      5. DPO on them (train.train_round)

Round k is written to ``resume_dir/online_dpo/round-k.partial/`` (``policy/``, ``pairs/``) and renamed to
``round-k/`` once ``round.json`` (its metrics: the marker of a finished round) is inside, so a crash leaves
only finished rounds and at most one partial folder, which is discarded. A re-run finds the finished rounds
1..k, loads round k's policy, logs that it resumes, reports ``resumed_from_round: k`` and continues at round
k+1. Every random draw of round j is seeded by (seed, j) alone — the prompt draw, the sampling generator, the
batch order, dropout — so a resumed run computes what an uninterrupted one does (bit for bit on the same
machine and thread count: the saved policy is float32 safetensors).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

from hubflow.errors import StageInputError
from hubflow.stage import Revision, StageContext, StageResult
from stages.online_dpo.config import Config

ROUND_MARKER = "round.json"
START_FILE = "start.json"


def state_dir(ctx: StageContext) -> Path:
    return ctx.resume_dir / "online_dpo"


def finished_rounds(root: Path, rounds: int) -> int:
    """k such that rounds 1..k are finished (each ``round-j/`` holds its marker); partial folders removed."""
    if root.is_dir():
        for partial in root.glob("round-*.partial"):
            shutil.rmtree(partial, ignore_errors=True)
    k = 0
    while k < rounds and (root / f"round-{k + 1}" / ROUND_MARKER).is_file():
        k += 1
    return k


def round_prompts(n_prompts: int, per_round: int | None, *, seed: int, round_index: int) -> list[int]:
    """Indices of the prompts of a round: a fresh seeded draw without replacement (all, if not fewer)."""
    if per_round is None or per_round >= n_prompts:
        return list(range(n_prompts))
    return random.Random(f"{seed}-prompts-{round_index}").sample(range(n_prompts), per_round)


def _sampling_seed(seed: int, round_index: int) -> int:
    return seed * 1_000_003 + round_index


EVAL_SEED_OFFSET = 7_919
"""Evaluation samples use the same seed at every round (common random numbers): round-to-round differences
are the policy's, not the draw's."""


class Job:
    """Inputs checked, models loaded, and the per-round work of one online DPO stage."""

    def __init__(self, ctx: StageContext, cfg: Config) -> None:
        from stages.lib.datasets import has_split, input_folder
        from stages.lib.reward_source import RewardPlan, check_reward, judge_problem
        from stages.lib.sampling import check_policy, encode_prompts, read_prompts

        self.ctx, self.cfg = ctx, cfg
        # -- every check that reads no weights, before any model loads or any token is sampled ----------
        self.policy = check_policy(ctx, check_base=cfg.check_base)
        tok = self.policy.tokenizer
        folder = input_folder(ctx, "prompts")
        spin = cfg.pairs == "spin"
        self.prompts = read_prompts(folder, cfg.split, need_completion=spin, limit=cfg.max_prompts)
        if spin:
            missing = [p.row for p in self.prompts if p.completion is None]
            if missing:
                raise StageInputError(
                    f"input 'prompts' row {missing[0]}: pairs: spin takes the gold `completion` as the chosen "
                    f"response, and {len(missing)} row(s) have none",
                    hint="fill the completion column, or drop those rows",
                )
        budget = dict(max_positions=self.policy.max_positions, max_new_tokens=cfg.max_new_tokens)
        self.ids = encode_prompts(tok, self.prompts, **budget)
        self.eval_rows: list[Any] = []
        self.eval_ids: list[list[int]] = []
        if cfg.eval_split and cfg.eval_prompts and has_split(folder, cfg.eval_split):
            self.eval_rows = read_prompts(folder, cfg.eval_split, limit=cfg.eval_prompts)
            self.eval_ids = encode_prompts(tok, self.eval_rows, **budget)
        elif cfg.eval_split and cfg.eval_prompts:
            ctx.logger.info("input 'prompts' has no %r split: the policy is not evaluated", cfg.eval_split)
        self.plan: RewardPlan | None
        if cfg.pairs == "reward" or "reward" in ctx.inputs or cfg.reward == "synthetic":
            self.plan = check_reward(ctx, cfg.reward, tok, self.prompts)
        else:  # spin without a reward: the gold judge measures, where it can
            self.plan = RewardPlan("synthetic", None, True) if judge_problem(self.prompts) is None else None
        self.eval_gold = bool(self.eval_rows) and judge_problem(self.eval_rows, input_name="prompts") is None

    # -- models --------------------------------------------------------------------------------------------

    def load(self, resume_from: Path | None) -> None:
        from accelerate import Accelerator

        from stages.lib.hardware import pick_mixed_precision
        from stages.lib.reward_source import Scorer
        from stages.online_dpo.model import frozen_initial, load_trainable

        cfg, ctx = self.cfg, self.ctx
        mixed = pick_mixed_precision(ctx.resources.mixed_precision, cpu=ctx.resources.cpu)
        self.accelerator = Accelerator(mixed_precision=mixed, cpu=ctx.resources.cpu)
        self.device = str(self.accelerator.device)
        self.trainable = load_trainable(
            self.policy, cfg.peft, device=self.device, logger=ctx.logger, resume_from=resume_from
        )
        self.model = self.accelerator.prepare(self.trainable.model)
        self.reference = None
        if cfg.reference == "initial":
            self.reference = frozen_initial(self.policy, self.trainable, device=self.device)
        self.scorer = None
        if self.plan is not None:
            self.scorer = self.plan.load(
                aggregate=cfg.aggregate, device=self.device, batch_size=cfg.score_batch_size
            )
        self.eval_scorer = None
        if self.scorer is not None and (self.scorer.model is not None or self.eval_gold):
            self.eval_scorer = Scorer(
                self.scorer.mode, self.scorer.model, self.eval_gold, cfg.score_batch_size
            )
        elif self.eval_gold:
            self.eval_scorer = Scorer("synthetic", None, True, cfg.score_batch_size)

    # -- one round -------------------------------------------------------------------------------------------

    def sample(self, rows: list[Any], ids: list[list[int]], *, n: int, seed: int) -> list[list[Any]]:
        from stages.lib.sampling import make_generator, sample_candidates

        cfg = self.cfg
        return sample_candidates(
            self.model,
            self.policy.tokenizer,
            rows,
            ids,
            n=n,
            pad_id=self.policy.pad_id,
            stop_ids=self.policy.stop_ids,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=cfg.top_k,
            generator=make_generator(seed, self.device),
            batch_size=cfg.generation_batch_size,
        )

    def evaluate(self) -> dict[str, float]:
        """The policy's mean reward (and gold score) on the evaluation prompts, sampled as in training."""
        if self.eval_scorer is None or not self.eval_rows:
            return {}
        cfg = self.cfg
        groups = self.sample(
            self.eval_rows, self.eval_ids, n=cfg.eval_samples, seed=cfg.seed + EVAL_SEED_OFFSET
        )
        flat = [c for g in groups for c in g]
        scores = self.eval_scorer(
            [self.eval_rows[c.prompt_index] for c in flat], [c.completion for c in flat]
        )
        out = {}
        if self.eval_scorer.model is not None:
            out["eval_reward"] = round(sum(scores.reward) / len(flat), 6)
        if scores.gold is not None:
            out["eval_gold"] = round(sum(scores.gold) / len(flat), 6)
        return out

    def run_round(self, k: int, step_offset: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Sample, rank, pair and train round ``k``; returns (its metrics, its pair rows)."""
        import torch

        from stages.lib.pairs import Pair, encode_pairs
        from stages.online_dpo.model import reference_context
        from stages.online_dpo.pairs import reward_pairs, spin_pairs
        from stages.online_dpo.train import reference_logps, train_round

        cfg, log = self.cfg, self.ctx.logger
        started = time.perf_counter()
        chosen = round_prompts(len(self.prompts), cfg.prompts_per_round, seed=cfg.seed, round_index=k)
        rows = [self.prompts[i] for i in chosen]
        groups = self.sample(rows, [self.ids[i] for i in chosen], n=cfg.k, seed=_sampling_seed(cfg.seed, k))
        flat = [c for g in groups for c in g]
        scores = None
        if self.scorer is not None:
            scores = self.scorer([rows[c.prompt_index] for c in flat], [c.completion for c in flat])
        if cfg.pairs == "spin":
            made = spin_pairs(rows, groups, scores, round_index=k)
        else:
            assert scores is not None
            made = reward_pairs(rows, groups, scores, round_index=k)
        tok = self.policy.tokenizer
        pairs = [
            Pair(r["prompt"], r["chosen"], r["rejected"], r["family"], i) for i, r in enumerate(made.rows)
        ]
        encoded, truncated = encode_pairs(
            tok, pairs, max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length
        )
        log.info(
            "round %d: %d prompts x %d samples -> %d pairs (%d ties dropped, %d dropped by max_length)",
            k,
            len(rows),
            cfg.k,
            len(made.rows),
            made.ties,
            truncated,
        )
        reference = self.reference if self.reference is not None else self.model
        with (
            torch.no_grad(),
            self.accelerator.autocast(),
            reference_context(reference, self.trainable, cfg.reference),
        ):
            ref = reference_logps(reference, encoded, self.policy.pad_id, batch_size=cfg.score_batch_size)
        summary = train_round(
            self.accelerator,
            self.model,
            encoded,
            ref,
            cfg,
            pad_id=self.policy.pad_id,
            round_index=k,
            step_offset=step_offset,
            log=self.ctx.log_metrics,
        )
        if summary.get("chosen_logps_fell_while_margin_grew"):
            log.warning(
                "round %d: the chosen responses' log-probs fell (%.4f -> %.4f) while the margin grew: the policy "
                "moves mass away from both; consider sft_weight > 0 or a lower learning_rate",
                k,
                summary["logps_chosen_first"],
                summary["logps_chosen_last"],
            )
        metrics: dict[str, Any] = {
            "round": k,
            "prompts": len(rows),
            "samples": len(flat),
            "pairs": len(encoded),
            "ties_dropped": made.ties,
            "truncation_dropped": truncated,
            **summary,
        }
        if scores is not None and self.scorer is not None and self.scorer.model is not None:
            metrics["sample_reward_mean"] = round(sum(scores.reward) / len(flat), 6)
        if scores is not None and scores.gold is not None:
            metrics["sample_gold_mean"] = round(sum(scores.gold) / len(flat), 6)
        metrics.update(self.evaluate())
        metrics["seconds"] = round(time.perf_counter() - started, 3)
        kept = {e.row for e in encoded}  # the pairs trained on (the dataset a `dpo` stage could re-run)
        return metrics, [r for i, r in enumerate(made.rows) if i in kept]

    def save_round(self, root: Path, k: int, metrics: dict[str, Any], rows: list[dict[str, Any]]) -> Path:
        """Write round k complete (policy, pairs, then the marker) and move it into place atomically."""
        from stages.lib.finetune.train import base_ref
        from stages.online_dpo.model import save_policy

        final = root / f"round-{k}"
        partial = root / f"round-{k}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        repo, rev = base_ref(self.ctx, "base" if self.policy.info.is_adapter else "model")
        model = self.accelerator.unwrap_model(self.model)
        save_policy(model, self.policy.tokenizer, partial / "policy", self.trainable, repo, rev)
        _write_pairs(partial / "pairs", rows, self.prompts[0].prompt)
        (partial / ROUND_MARKER).write_text(
            json.dumps(metrics, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
        return final


def _write_pairs(folder: Path, rows: list[dict[str, Any]], example_prompt: Any) -> None:
    import pyarrow as pa

    from stages.lib.datasets import write_split

    schema = None
    if not rows:  # an empty split still needs its columns
        text = pa.array([example_prompt]).type
        schema = pa.schema([("prompt", text), ("chosen", text), ("rejected", text), ("round", pa.int64())])
    write_split(folder, "train", rows, schema=schema)


def online_dpo(ctx: StageContext, cfg: Config) -> StageResult:
    job = Job(ctx, cfg)  # bad input fails here, before any weight is read
    root = state_dir(ctx)
    done = finished_rounds(root, cfg.rounds)
    if done:
        ctx.logger.info(
            "resuming: rounds 1..%d are finished in the resume folder; continuing at round %d of %d",
            done,
            done + 1,
            cfg.rounds,
        )
    job.load(root / f"round-{done}" / "policy" if done else None)
    start_path = root / START_FILE
    if start_path.is_file():
        start = json.loads(start_path.read_text(encoding="utf-8"))
    else:
        start = job.evaluate()
        root.mkdir(parents=True, exist_ok=True)
        start_path.write_text(json.dumps(start, sort_keys=True) + "\n", encoding="utf-8")
    per_round = [
        json.loads((root / f"round-{j}" / ROUND_MARKER).read_text(encoding="utf-8"))
        for j in range(1, done + 1)
    ]
    steps = sum(int(m.get("steps", 0)) for m in per_round)
    for k in range(done + 1, cfg.rounds + 1):
        metrics, rows = job.run_round(k, steps)
        steps += int(metrics.get("steps", 0))
        job.save_round(root, k, metrics, rows)
        ctx.log_metrics(**{key: v for key, v in metrics.items() if isinstance(v, (int, float))})
        per_round.append(metrics)
        ctx.logger.info("round %d of %d finished: %s", k, cfg.rounds, _short(metrics))
    last = root / f"round-{cfg.rounds}"
    for name in ("policy", "pairs"):
        shutil.copytree(last / name, ctx.outputs[name], dirs_exist_ok=True)
    revisions = [
        Revision(output=name, label=f"round-{j}", folder=root / f"round-{j}" / name, metrics=per_round[j - 1])
        for j in range(1, cfg.rounds + 1)
        for name in ("pairs", "policy")
    ]
    metrics = _metrics(cfg, start, per_round, done)
    return StageResult(
        metrics=metrics,
        card_sections={"Online DPO": _card(cfg, metrics)},
        card_metadata=_card_metadata(ctx, job),
        revisions=revisions,
    )


def _short(m: dict[str, Any]) -> str:
    keys = (
        "pairs",
        "ties_dropped",
        "loss_first",
        "loss_last",
        "sample_reward_mean",
        "sample_gold_mean",
        "eval_reward",
        "eval_gold",
    )
    return ", ".join(f"{k} {m[k]}" for k in keys if k in m)


def _metrics(
    cfg: Config, start: dict[str, Any], per_round: list[dict[str, Any]], done: int
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "rounds": cfg.rounds,
        "resumed_from_round": done,
        "pairs_total": sum(m["pairs"] for m in per_round),
        "ties_dropped_total": sum(m["ties_dropped"] for m in per_round),
        "steps_total": sum(m.get("steps", 0) for m in per_round),
        "per_round": per_round,
    }
    for key in ("eval_reward", "eval_gold"):
        if key in start:
            out[f"{key}_start"] = start[key]
            out[f"{key}_final"] = per_round[-1].get(key)
            out[f"{key}_gain"] = round(per_round[-1][key] - start[key], 6) if key in per_round[-1] else None
    return out


def _card(cfg: Config, m: dict[str, Any]) -> str:
    pairing = (
        "chosen = the gold completion, rejected = the policy's own generation (SPIN)"
        if cfg.pairs == "spin"
        else f"chosen = best, rejected = worst of {cfg.k} samples by the reward (ties dropped)"
    )
    lines = [
        f"{cfg.rounds} rounds of online {'IPO' if cfg.loss_type == 'ipo' else 'DPO'} (β = {cfg.beta:g}"
        + (f", + {cfg.sft_weight:g} × NLL of chosen" if cfg.sft_weight else "")
        + f"; reference: {cfg.reference}; {cfg.peft.method} training), {pairing}. "
        "Each round's pairs and policy are a revision of this stage's outputs (`round-K` on the `checkpoints` "
        "branch); the outputs are the last round's.",
        "",
        "| round | pairs | ties dropped | steps | loss first → last | margin last | sample reward | sample gold | eval reward | eval gold |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    if "eval_gold_start" in m or "eval_reward_start" in m:
        lines.append(
            f"| start | | | | | | | | {m.get('eval_reward_start', '')} | {m.get('eval_gold_start', '')} |"
        )
    for r in m["per_round"]:
        lines.append(
            f"| {r['round']} | {r['pairs']} | {r['ties_dropped']} | {r.get('steps', 0)} | "
            f"{r.get('loss_first', '')} → {r.get('loss_last', '')} | {r.get('margin_last', '')} | "
            f"{r.get('sample_reward_mean', '')} | {r.get('sample_gold_mean', '')} | {r.get('eval_reward', '')} | "
            f"{r.get('eval_gold', '')} |"
        )
    if m["resumed_from_round"]:
        lines += [
            "",
            f"Resumed after round {m['resumed_from_round']} (finished rounds kept from the resume folder).",
        ]
    return "\n".join(lines)


def _card_metadata(ctx: StageContext, job: Job) -> dict[str, Any]:
    from stages.lib.finetune.train import base_ref

    adapter = job.trainable.base_folder is not None
    repo, _ = base_ref(ctx, "base" if job.policy.info.is_adapter else "model")
    meta: dict[str, Any] = {
        "base_model_relation": "adapter" if adapter else "finetune",
        "library_name": "peft" if adapter else "transformers",
        "pipeline_tag": "text-generation",
    }
    if repo:
        meta["base_model"] = repo
    return meta
