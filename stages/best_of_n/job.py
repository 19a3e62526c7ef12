"""Sampling N candidates per prompt, scoring them, keeping the best (seed §4.9), and the two datasets."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from hubflow.stage import StageContext, StageResult
from stages.best_of_n.config import Config


def kl_estimate(n: int) -> float:
    """D_KL[π_BoN ‖ π] ≈ log N − (N−1)/N, in nats (seed §4.9): the divergence best-of-N spends."""
    return math.log(n) - (n - 1) / n


def select_best(scores: Sequence[float]) -> tuple[int, int]:
    """(index of the best score, how many candidates share it). Ties go to the first sampled (the lowest
    index), so the choice is fixed by the seed and does not depend on how a sort breaks ties."""
    if not scores:
        raise ValueError("select_best needs at least one score")
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    return best, sum(1 for s in scores if s == scores[best])


def _mean(values: Sequence[float]) -> float:
    return round(statistics.fmean(values), 6) if values else float("nan")


def best_of_n(ctx: StageContext, cfg: Config) -> StageResult:
    import torch

    from stages.lib.datasets import input_folder
    from stages.lib.hardware import device_for
    from stages.lib.reward_source import check_reward
    from stages.lib.sampling import (
        check_policy,
        encode_prompts,
        make_generator,
        read_prompts,
        sample_candidates,
    )

    # every check that reads no weights, before any model loads or any token is sampled
    policy = check_policy(ctx, check_base=cfg.check_base)
    prompts = read_prompts(input_folder(ctx, "prompts"), cfg.split, limit=cfg.max_prompts)
    ids = encode_prompts(
        policy.tokenizer, prompts, max_positions=policy.max_positions, max_new_tokens=cfg.max_new_tokens
    )
    plan = check_reward(ctx, cfg.reward, policy.tokenizer, prompts)

    device = device_for(ctx.resources)
    model = policy.load(device=device, logger=ctx.logger)
    scorer = plan.load(aggregate=cfg.aggregate, device=device, batch_size=cfg.score_batch_size)
    torch.manual_seed(cfg.seed)
    ctx.logger.info("sampling %d responses for each of %d prompts", cfg.n, len(prompts))
    candidates = sample_candidates(
        model,
        policy.tokenizer,
        prompts,
        ids,
        n=cfg.n,
        pad_id=policy.pad_id,
        stop_ids=policy.stop_ids,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=cfg.top_k,
        generator=make_generator(cfg.seed, device),
        batch_size=cfg.generation_batch_size,
    )
    flat = [c for group in candidates for c in group]
    scores = scorer([prompts[c.prompt_index] for c in flat], [c.completion for c in flat])
    ctx.logger.info("scored %d candidates with %s", len(flat), scorer.describe())

    candidate_rows, best_rows, kept, ties = _rows(prompts, flat, scores, cfg.n)
    _write(ctx, candidate_rows, best_rows)
    metrics = _metrics(cfg, flat, scores, kept, ties, len(prompts))
    ctx.log_metrics(**{k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    return StageResult(metrics=metrics, card_sections={"Best-of-N": _card(cfg, metrics, scorer.describe())})


def _rows(
    prompts: Sequence[Any], flat: Sequence[Any], scores: Any, n: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[int], int]:
    """(candidate rows, best rows, the kept candidates' indices in ``flat``, prompts with tied best scores)."""
    candidate_rows: list[dict[str, Any]] = []
    best_rows: list[dict[str, Any]] = []
    kept: list[int] = []
    ties = 0
    for start in range(0, len(flat), n):
        best, tied = select_best(scores.reward[start : start + n])
        ties += tied > 1
        kept.append(start + best)
        for j in range(n):
            c, i = flat[start + j], start + j
            p = prompts[c.prompt_index]
            row: dict[str, Any] = {
                "prompt_index": p.row,
                "sample": c.sample,
                "prompt": p.prompt,
                "completion": c.completion,
                "score": scores.reward[i],
                "kept": j == best,
                "ended": c.ended,
                "tokens": c.tokens,
                "family": p.family,
                **p.extra,
            }
            if scores.members is not None:
                row["member_scores"] = [m[i] for m in scores.members]
            if scores.gold is not None:
                row["gold"] = scores.gold[i]
            candidate_rows.append(row)
            if j == best:
                best_row = {k: row[k] for k in ("prompt", "completion", "score", "family", "sample")}
                best_rows.append({**best_row, **({"gold": row["gold"]} if "gold" in row else {}), **p.extra})
    return candidate_rows, best_rows, kept, ties


def _write(ctx: StageContext, candidate_rows: list[dict[str, Any]], best_rows: list[dict[str, Any]]) -> None:
    from stages.lib.datasets import write_split

    write_split(ctx.outputs["candidates"], "train", candidate_rows)
    write_split(ctx.outputs["best"], "train", best_rows)


def _metrics(
    cfg: Config, flat: Sequence[Any], scores: Any, kept: list[int], ties: int, prompts: int
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "prompts": prompts,
        "n": cfg.n,
        "candidates": len(flat),
        "kl_estimate": round(kl_estimate(cfg.n), 6),
        "reward_mean_all": _mean(scores.reward),
        "reward_mean_best": _mean([scores.reward[i] for i in kept]),
        "prompts_with_tied_best": ties,
        "ended_fraction": _mean([float(c.ended) for c in flat]),
        "response_tokens_mean": _mean([float(c.tokens) for c in flat]),
    }
    out["reward_gain"] = round(out["reward_mean_best"] - out["reward_mean_all"], 6)
    if scores.gold is not None:
        out["gold_mean_all"] = _mean(scores.gold)
        out["gold_mean_best"] = _mean([scores.gold[i] for i in kept])
        out["gold_gain"] = round(out["gold_mean_best"] - out["gold_mean_all"], 6)
    if scores.members is not None:
        out["member_reward_mean_all"] = [_mean(m) for m in scores.members]
    return out


def _card(cfg: Config, m: dict[str, Any], reward: str) -> str:
    lines = [
        f"Best of **N = {cfg.n}** responses per prompt (temperature {cfg.temperature:g}, top_p {cfg.top_p:g}, "
        f"top_k {cfg.top_k}, up to {cfg.max_new_tokens} new tokens, seed {cfg.seed}) over {m['prompts']} "
        f"prompts, scored by {reward}. The best response of each prompt is kept (ties: the first sampled).",
        "",
        "| | plain sampling (mean of all N) | best-of-N (mean of the kept) | gain |",
        "| --- | --- | --- | --- |",
        f"| reward | {m['reward_mean_all']:.4f} | {m['reward_mean_best']:.4f} | {m['reward_gain']:+.4f} |",
    ]
    if "gold_mean_all" in m:
        lines.append(
            f"| gold judge | {m['gold_mean_all']:.4f} | {m['gold_mean_best']:.4f} | {m['gold_gain']:+.4f} |"
        )
    lines += [
        "",
        f"KL(π_BoN ‖ π) ≈ log N − (N−1)/N = **{m['kl_estimate']:.4f} nats** (seed §4.9). "
        f"{m['prompts_with_tied_best']} prompts had several candidates at the best score; "
        f"{m['ended_fraction']:.1%} of responses ended with a stop token.",
        "",
        "Output `candidates`: every response with `score`, `kept`"
        + (", `gold`" if "gold_mean_all" in m else "")
        + (", `member_scores`" if "member_reward_mean_all" in m else "")
        + "; output `best`: the kept (prompt, completion) pairs, ready for an `sft` stage "
        "(`format: prompt_completion`).",
    ]
    return "\n".join(lines)
