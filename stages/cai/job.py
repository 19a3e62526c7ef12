"""Draft → critique → revision with the policy, then the judge's labels, and the two datasets."""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence
from typing import Any

from hubflow.errors import StageInputError
from hubflow.stage import StageContext, StageResult
from stages.cai.config import JUDGE_BASE_INPUT, JUDGE_INPUT, Config


def conversation(prompt: Any) -> list[dict[str, Any]]:
    """The prompt as chat turns (a string becomes one user turn)."""
    from stages.lib.chat import as_chat

    messages = as_chat(prompt)
    return messages if messages is not None else [{"role": "user", "content": str(prompt)}]


def user_text(prompt: Any) -> str:
    """What the user asked: the last user turn's content (or the string)."""
    turns = [m for m in conversation(prompt) if m.get("role") == "user"]
    return str(turns[-1]["content"]) if turns else ""


def critique_turns(prompt: Any, draft: str, request: str) -> list[dict[str, Any]]:
    return [
        *conversation(prompt),
        {"role": "assistant", "content": draft},
        {"role": "user", "content": request},
    ]


def revision_turns(
    prompt: Any, draft: str, critique_request: str, critique: str, revision_request: str
) -> list:
    return [
        *critique_turns(prompt, draft, critique_request),
        {"role": "assistant", "content": critique},
        {"role": "user", "content": revision_request},
    ]


def draw_principles(n_prompts: int, n_principles: int, seed: int) -> list[int]:
    """The principle of each prompt: uniform draws from ``random.Random(seed)``."""
    rng = random.Random(f"{seed}-principles")
    return [rng.randrange(n_principles) for _ in range(n_prompts)]


def _check_context(policy: Any, prompts: Sequence[Any], cfg: Config, principles: list[str]) -> None:
    """The revision step sees prompt + draft + critique request + critique + revision request: with both
    responses at max_new_tokens, it must still leave room for max_new_tokens more (named row otherwise)."""
    from stages.lib.chat import generation_prompt_ids

    if policy.max_positions is None:
        return
    tok, n = policy.tokenizer, cfg.max_new_tokens
    for p, principle in zip(prompts, principles, strict=True):
        turns = revision_turns(
            p.prompt,
            "",
            cfg.critique_request.format(principle=principle),
            "",
            cfg.revision_request.format(principle=principle),
        )
        need = len(generation_prompt_ids(tok, turns)) + 3 * n
        if need > policy.max_positions:
            raise StageInputError(
                f"input 'prompts' row {p.row}: prompt, critique and revision requests take "
                f"{need - 3 * n} tokens; with three responses of max_new_tokens {n} that is {need}, more than the "
                f"model's {policy.max_positions} positions",
                hint="lower max_new_tokens, shorten the request templates, or drop the long prompts",
            )


def cai(ctx: StageContext, cfg: Config) -> StageResult:
    import torch

    from stages.lib.datasets import input_folder
    from stages.lib.hardware import device_for
    from stages.lib.reward_source import judge_problem
    from stages.lib.sampling import check_policy, encode_prompts, make_generator, prompt_ids, read_prompts

    # -- every check that reads no weights, before any model loads or any token is sampled --------------
    policy = check_policy(ctx, check_base=cfg.check_base, need_chat_template=True)
    prompts = read_prompts(input_folder(ctx, "prompts"), cfg.split, limit=cfg.max_prompts)
    ids = encode_prompts(
        policy.tokenizer, prompts, max_positions=policy.max_positions, max_new_tokens=cfg.max_new_tokens
    )
    chosen_principles = draw_principles(len(prompts), len(cfg.constitution), cfg.seed)
    principles = [cfg.constitution[i] for i in chosen_principles]
    _check_context(policy, prompts, cfg, principles)
    judge_policy = None
    gold = judge_problem(prompts) is None
    if cfg.judge == "synthetic":
        problem = judge_problem(prompts)
        if problem:
            raise StageInputError(
                f"judge: synthetic labels pairs with the gold judge, which needs the task family: {problem}",
                hint="use a synthetic stage's prompts (they carry `family`), or judge: model",
            )
    elif JUDGE_INPUT in ctx.inputs:
        judge_policy = check_policy(
            ctx,
            input_name=JUDGE_INPUT,
            base_input=JUDGE_BASE_INPUT,
            tokenizer_input=None,
            check_base=cfg.check_base,
            sampling=False,
        )

    device = device_for(ctx.resources)
    model = policy.load(device=device, logger=ctx.logger)
    tok = policy.tokenizer
    generator = make_generator(cfg.seed, device)
    torch.manual_seed(cfg.seed)

    def generate(prompt_token_ids: list[list[int]]) -> list[Any]:
        from stages.lib.sampling import sample_candidates

        groups = sample_candidates(
            model,
            tok,
            prompts,
            prompt_token_ids,
            n=1,
            pad_id=policy.pad_id,
            stop_ids=policy.stop_ids,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=cfg.top_k,
            generator=generator,
            batch_size=cfg.generation_batch_size,
        )
        return [g[0] for g in groups]

    critique_requests = [cfg.critique_request.format(principle=p) for p in principles]
    revision_requests = [cfg.revision_request.format(principle=p) for p in principles]
    ctx.logger.info("cai: drafting, critiquing and revising %d prompts", len(prompts))
    drafts = generate(ids)
    critiques = generate(
        [
            prompt_ids(tok, critique_turns(p.prompt, d.text, r))
            for p, d, r in zip(prompts, drafts, critique_requests, strict=True)
        ]
    )
    revisions = generate(
        [
            prompt_ids(tok, revision_turns(p.prompt, d.text, cr, c.text, rr))
            for p, d, cr, c, rr in zip(
                prompts, drafts, critique_requests, critiques, revision_requests, strict=True
            )
        ]
    )

    # -- labels -------------------------------------------------------------------------------------------
    from stages.lib.sampling import as_completion

    draft_completions = [as_completion(p.prompt, d.text) for p, d in zip(prompts, drafts, strict=True)]
    revised = [as_completion(p.prompt, r.text) for p, r in zip(prompts, revisions, strict=True)]
    gold_scores = None
    if gold:
        from stages.lib.rewards import gold_rewards

        fams = [p.family for p in prompts]
        texts = [p.prompt for p in prompts]
        gold_scores = (gold_rewards(fams, texts, draft_completions), gold_rewards(fams, texts, revised))
    verdicts = None
    if cfg.judge == "model":
        from stages.cai.judge import judge_pairs

        judge_model, judge_tok = model, tok
        if judge_policy is not None:
            judge_model, judge_tok = (
                judge_policy.load(device=device, logger=ctx.logger),
                judge_policy.tokenizer,
            )
        verdicts = judge_pairs(
            judge_model,
            judge_tok,
            cfg.judge_template,
            [
                (user_text(p.prompt), principle, d.text, r.text)
                for p, principle, d, r in zip(prompts, principles, drafts, revisions, strict=True)
            ],
            batch_size=cfg.generation_batch_size,
        )

    revision_rows, preference_rows, ties = [], [], 0
    for i, p in enumerate(prompts):
        base = {
            "principle": principles[i],
            "principle_index": chosen_principles[i],
            "family": p.family,
            **p.extra,
        }
        revision_rows.append(
            {
                "prompt": p.prompt,
                "completion": revised[i],
                "draft": draft_completions[i],
                "critique": critiques[i].text,
                **base,
            }
        )
        if cfg.judge == "model":
            assert verdicts is not None
            v = verdicts[i]
            p_rev = v.p_second
            extra: dict[str, Any] = {
                "p_revision": p_rev,
                "logp_a_draft_first": v.logp_a_first,
                "logp_b_draft_first": v.logp_b_first,
                "logp_a_revision_first": v.logp_a_second,
                "logp_b_revision_first": v.logp_b_second,
            }
        else:
            assert gold_scores is not None
            d, r = gold_scores[0][i], gold_scores[1][i]
            p_rev = 1.0 if r > d else 0.0 if r < d else 0.5
            extra = {"p_revision": p_rev}
        if gold_scores is not None:
            extra.update(gold_draft=gold_scores[0][i], gold_revision=gold_scores[1][i])
        if revisions[i].text == drafts[i].text or p_rev == 0.5:
            ties += 1
            continue
        revision_wins = p_rev > 0.5
        preference_rows.append(
            {
                "prompt": p.prompt,
                "chosen": revised[i] if revision_wins else draft_completions[i],
                "rejected": draft_completions[i] if revision_wins else revised[i],
                "chosen_is_revision": revision_wins,
                **extra,
                **base,
            }
        )
    _write(ctx, revision_rows, preference_rows, prompts[0].prompt)
    metrics = _metrics(cfg, drafts, critiques, revisions, preference_rows, ties, verdicts, gold_scores)
    ctx.log_metrics(**{k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    return StageResult(metrics=metrics, card_sections={"Constitutional AI": _card(cfg, metrics)})


def _write(ctx: StageContext, revision_rows: list, preference_rows: list, example_prompt: Any) -> None:
    import pyarrow as pa

    from stages.lib.datasets import write_split

    write_split(ctx.outputs["revisions"], "train", revision_rows)
    schema = None
    if not preference_rows:
        text = pa.array([example_prompt]).type
        schema = pa.schema([("prompt", text), ("chosen", text), ("rejected", text)])
    write_split(ctx.outputs["preferences"], "train", preference_rows, schema=schema)


def _mean(values: Sequence[float]) -> float | None:
    return round(statistics.fmean(values), 6) if values else None


def _metrics(
    cfg: Config,
    drafts: list[Any],
    critiques: list[Any],
    revisions: list[Any],
    preference_rows: list[dict[str, Any]],
    ties: int,
    verdicts: list[Any] | None,
    gold_scores: tuple[list[float], list[float]] | None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "prompts": len(drafts),
        "pairs": len(preference_rows),
        "ties_dropped": ties,
        "revisions_unchanged": sum(d.text == r.text for d, r in zip(drafts, revisions, strict=True)),
        "empty_drafts": sum(not d.text.strip() for d in drafts),
        "empty_critiques": sum(not c.text.strip() for c in critiques),
        "empty_revisions": sum(not r.text.strip() for r in revisions),
        "revision_preferred": _mean([float(r["chosen_is_revision"]) for r in preference_rows]),
        "judge": cfg.judge,
    }
    if verdicts is not None:
        out["judge_position_bias_a"] = _mean([v.p_slot_a for v in verdicts])
        out["judge_p_revision_mean"] = _mean([v.p_second for v in verdicts])
    if gold_scores is not None:
        out["gold_draft_mean"] = _mean(gold_scores[0])
        out["gold_revision_mean"] = _mean(gold_scores[1])
        decided = [r for r in preference_rows if r["gold_draft"] != r["gold_revision"]]
        if decided and cfg.judge == "model":
            agree = [(r["gold_revision"] > r["gold_draft"]) == r["chosen_is_revision"] for r in decided]
            out["judge_gold_agreement"] = _mean([float(a) for a in agree])
            out["judge_gold_decided_pairs"] = len(decided)
    return out


def _card(cfg: Config, m: dict[str, Any]) -> str:
    judge = (
        "the gold judge of the synthetic task families"
        if cfg.judge == "synthetic"
        else 'a model judge: log π("(A)") vs log π("(B)") after the judge template, both orders averaged'
    )
    lines = [
        f"Constitutional AI data (seed §4.8.4) from {m['prompts']} prompts with a constitution of "
        f"{len(cfg.constitution)} principles: each prompt's draft was critiqued against one sampled principle "
        f"and revised (temperature {cfg.temperature:g}, up to {cfg.max_new_tokens} new tokens per step), and "
        f"(draft, revision) was labelled by {judge}.",
        "",
        f"Pairs: {m['pairs']} (ties and unchanged revisions dropped: {m['ties_dropped']}); the revision was "
        f"preferred in {m['revision_preferred']} of them. Empty texts — drafts {m['empty_drafts']}, critiques "
        f"{m['empty_critiques']}, revisions {m['empty_revisions']}.",
    ]
    if "judge_position_bias_a" in m:
        lines.append(
            f"Judge position bias: P(answer (A)) averaged over both orders = {m['judge_position_bias_a']}."
        )
    if "gold_draft_mean" in m:
        lines.append(f"Gold judge: drafts {m['gold_draft_mean']}, revisions {m['gold_revision_mean']}.")
    lines += [
        "",
        "Outputs: `revisions` (prompt, completion = the revision, draft, critique, principle) for an `sft` stage; "
        "`preferences` (prompt, chosen, rejected, p_revision) for a `reward` or `dpo` stage.",
        "",
        "Principles:",
        *[f"{i}. {p}" for i, p in enumerate(cfg.constitution)],
    ]
    return "\n".join(lines)
