"""``run_stage``: the body of the ``grpo`` and ``rloo`` kinds' ``run``, and their card."""

from __future__ import annotations

from typing import Any

from hubflow.stage import StageContext, StageResult
from stages.lib.reinforce.config import ReinforceConfig
from stages.lib.reinforce.train import PLOT_FILE, Method, Run, build, save_outputs, train

_LAST_LOGGED = (
    "reward",
    "reward_std",
    "gold_reward",
    "kl",
    "kl_per_sequence",
    "entropy",
    "completions/mean_length",
    "completions/clipped_ratio",
    "clip_ratio/region_mean",
    "clip_ratio/low_mean",
    "clip_ratio/high_mean",
    "frac_reward_zero_std",
    "loss",
    "grad_norm",
)


def run_stage(ctx: StageContext, cfg: ReinforceConfig, method: Method) -> StageResult:
    """Check, build, train, save; the metrics, card section and plot of one grpo / rloo run."""
    from stages.lib.reinforce.monitor import plot_overoptimization

    run = build(ctx, cfg, method)
    train(run, ctx)
    metrics = summary(run, cfg, method)
    meta: dict[str, Any] = {}
    images: dict[str, str] = {}
    if run.trainer.is_world_process_zero():
        meta = save_outputs(run, ctx, cfg)
        label = "gold reward" if cfg.reward == "synthetic" else "proxy reward (reward model)"
        for out in ctx.outputs.values():
            if plot_overoptimization(
                run.monitor, out / PLOT_FILE, f"{method}: reward against KL", proxy_label=label
            ):
                images = {"Proxy and gold reward against KL": PLOT_FILE}
    return StageResult(
        metrics=metrics,
        card_sections={method.upper(): card(run, cfg, method, metrics)},
        card_metadata=meta,
        images=images,
    )


def summary(run: Run, cfg: ReinforceConfig, method: Method) -> dict[str, Any]:
    m = dict(run.metrics)
    m.update(
        {
            "method": method,
            "peft_method": cfg.peft.method,
            "policy_mode": run.policy.mode,
            "reward_source": "gold_judge" if cfg.reward == "synthetic" else "reward_model",
            "reward_members": len(run.checked.reward_members) or None,
            "kl_in_objective": cfg.beta > 0,
            "completions": sum(s.n for s in run.scorer.setup.store.summaries.values()),
        }
    )
    logged = [h for h in run.trainer.state.log_history if "reward" in h]
    if logged:
        for key in _LAST_LOGGED:
            if key in logged[-1] and logged[-1][key] is not None:
                m[f"last/{key}"] = round(float(logged[-1][key]), 6)
    mon = run.monitor
    if mon.history:
        first, last = mon.start or mon.history[0], mon.history[-1]
        m["windows"] = [
            {"step": w.step, "proxy": round(w.proxy, 6), "gold": _r(w.gold), "kl_per_sequence": _r(w.kl)}
            for w in mon.history
        ]
        m.update(
            {
                "proxy_reward_first": round(first.proxy, 6),
                "proxy_reward_last": round(last.proxy, 6),
                "gold_reward_first": _r(first.gold),
                "gold_reward_last": _r(last.gold),
                "kl_per_sequence_last": _r(last.kl),
                "kl_per_sequence_max": max((w.kl for w in mon.history if w.kl is not None), default=None),
            }
        )
        if mon.best is not None:
            m["gold_reward_best"] = round(mon.best.gold, 6)  # type: ignore[arg-type]
            m["gold_reward_best_step"] = mon.best.step
    if mon.start is not None:
        m["start_kl_per_sequence"] = _r(
            mon.start.kl
        )  # the first batch, before any update: 0 when π_ref is right
    m["stopped_early"] = mon.stop_reason
    m["stopped_at_step"] = mon.stop_step
    return m


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


def card(run: Run, cfg: ReinforceConfig, method: Method, m: dict[str, Any]) -> str:
    reward = (
        "the synthetic families' gold judge (verifiable reward)"
        if cfg.reward == "synthetic"
        else f"a reward model ({m['reward_members']} member(s), {cfg.aggregate} over members)"
    )
    lines = [
        f"**{method}** through TRL's `{'GRPOTrainer' if method == 'grpo' else 'RLOOTrainer'}` "
        f"({run.policy.mode} policy), reward: {reward}.",
        "",
        f"G = {cfg.num_generations} completions per prompt, β = {cfg.beta:g}, ε = {cfg.epsilon:g}, "
        f"T = {cfg.temperature:g}, max_completion_length {cfg.max_completion_length}"
        + (f", scale_rewards `{cfg.scale_rewards}`, loss_type `{cfg.loss_type}`" if method == "grpo" else "")  # type: ignore[attr-defined]
        + ".",
        f"Steps: {m['steps']} ({m['completions']} completions from {m['prompts']} prompts); "
        f"trainable parameters {m['trainable_params']:,} of {m['total_params']:,}.",
    ]
    if m.get("stopped_early"):
        lines.append(f"Stopped early at step {m['stopped_at_step']}: {m['stopped_early']}.")
    if m.get("windows"):
        lines += [
            "",
            f"Mean reward per completion in windows of {cfg.eval_steps} steps, and KL(π‖π_ref) in nats per "
            "sequence on each window's last batch (seed §4.12: gold rising then falling while KL grows is "
            "over-optimisation):",
            "",
            "| step | proxy reward | gold reward | KL / sequence |",
            "| --- | --- | --- | --- |",
        ]
        lines += [
            f"| {w['step']} | {w['proxy']:.4f} | {_fmt(w['gold'])} | {_fmt(w['kl_per_sequence'])} |"
            for w in m["windows"]
        ]
    if run.policy.mode == "full":
        lines += ["", "Load with `transformers.AutoModelForCausalLM.from_pretrained(this_folder)`."]
    else:
        lines += [
            "",
            "Load with `stages.lib.models.load_model(this_folder, base=base_folder)` (a peft LoRA adapter).",
        ]
    return "\n".join(lines)


def _fmt(x: Any) -> str:
    return "" if x is None else f"{x:.4f}"
