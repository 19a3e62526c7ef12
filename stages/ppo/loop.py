"""The PPO loop (seed §4.5 phase 3, steps 4–6), on accelerate and torch.

Step 4: inputs checked (``inputs.check_inputs``, no weight read), models loaded (``models``), AdamW over
the policy's trained weights and the critic's (two parameter groups), the learning-rate schedule stepped
once per PPO step (as TRL's PPO does). Step 5, for each PPO step: the rollout phase (``experience``), the
hard KL budget and gold early stopping, the optimisation phase (``update``), the KL controller update
(β for the next batch), the log line, the rollout rows, and every ``save_steps`` a checkpoint
(``state``). Step 6: publish the policy and the rollouts. Single process (one device); its seed is
``seed + process index`` so ranks would differ (PPO detail 15).
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from typing import Any

from hubflow.stage import StageContext, StageResult
from stages.ppo.config import BASE_INPUT, POLICY_INPUT


def _controller(cfg: Any) -> Any:
    from stages.ppo.kl_control import AdaptiveKLController, FixedKLController

    kl = cfg.kl_control
    if kl.type == "fixed":
        return FixedKLController(kl.kl_coef)
    return AdaptiveKLController(kl.init_kl_coef, kl.target, kl.horizon)


def _optimizer(cfg: Any, models: Any, total: int) -> tuple[Any, Any]:
    import torch
    from transformers import get_scheduler

    groups = [{"params": list(models.policy.trainable().values()), "lr": cfg.learning_rate}]
    if models.critic is not None:
        groups.append(
            {
                "params": list(models.critic.trainable().values()),
                "lr": cfg.critic_learning_rate or cfg.learning_rate,
            }
        )
    optimizer = torch.optim.AdamW(
        groups,
        lr=cfg.learning_rate,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        eps=cfg.adam_epsilon,
        weight_decay=cfg.weight_decay,
    )
    extra = {"min_lr_rate": 0.1} if cfg.lr_scheduler_type == "cosine_with_min_lr" else None
    scheduler = get_scheduler(
        cfg.lr_scheduler_type,
        optimizer,
        num_warmup_steps=cfg.warmup_for(total),
        num_training_steps=total,
        scheduler_specific_kwargs=extra,
    )
    return optimizer, scheduler


def gold_evaluation(models: Any, checked: Any, cfg: Any, autocast: Callable) -> float:
    """Mean gold reward of greedy answers to the prompts' test split (the held-out gold evaluation)."""
    from stages.lib.generation import decode, sample
    from stages.lib.rewards import gold_rewards

    test = checked.test
    with autocast():
        rollout = sample(
            models.policy.model,
            test.ids,
            pad_id=checked.tokenizer.pad_token_id,
            stop_ids=checked.stop_ids,
            max_new_tokens=cfg.response_length,
            greedy=True,
            batch_size=cfg.local_rollout_forward_batch_size,
        )
    scores = gold_rewards(test.families, test.prompts, decode(checked.tokenizer, rollout))
    return sum(scores) / len(scores)


def _ref(ctx: StageContext, name: str) -> tuple[str | None, str | None]:
    text = ctx.input_refs.get(name)
    if not text:
        return None, None
    body = text.split(":", 1)[1] if ":" in text else text
    repo, _, rev = body.partition("@")
    return repo, rev or None


class Run:
    """The state of one PPO run, from its inputs to its published outputs."""

    def __init__(self, ctx: StageContext, cfg: Any, observer: Callable | None) -> None:
        import torch
        from accelerate import Accelerator

        from stages.lib.checkpoints import CheckpointWriter
        from stages.lib.hardware import pick_mixed_precision
        from stages.ppo.inputs import check_inputs
        from stages.ppo.kl_control import KLBudget
        from stages.ppo.models import load_models
        from stages.ppo.rewards import RunningMoments
        from stages.ppo.state import Checkpoints, GoldStop

        self.ctx, self.cfg, self.observer = ctx, cfg, observer
        self.mixed = pick_mixed_precision(ctx.resources.mixed_precision, cpu=ctx.resources.cpu)
        self.acc = Accelerator(cpu=ctx.resources.cpu, mixed_precision=self.mixed)
        self.checked = check_inputs(ctx, cfg)  # every check that needs no weights, before any
        device = str(self.acc.device)
        torch.manual_seed(cfg.seed)
        self.models = load_models(self.checked, cfg, device)
        n = len(self.checked.train)
        self.total = cfg.max_steps or math.ceil(n / cfg.rollout_batch_size)
        optimizer, self.scheduler = _optimizer(cfg, self.models, self.total)
        self.optimizer = self.acc.prepare(optimizer)
        self.controller = _controller(cfg)
        self.moments = RunningMoments()
        self.budget = (
            KLBudget(cfg.kl_budget.max_kl, patience=cfg.kl_budget.patience) if cfg.kl_budget else None
        )
        gs = cfg.stop_when_gold_drops
        self.gold_stop = GoldStop(gs.patience, gs.min_delta) if gs else None
        rank = self.acc.process_index
        self.sampling = torch.Generator(device=device).manual_seed(cfg.seed + rank)
        self.shuffling = torch.Generator(device="cpu").manual_seed(cfg.seed + 1_000_003 + rank)
        self.snapshots: dict[str, dict[str, Any]] = {"within": {}, "best": {}}
        self.best_step: int | None = None
        self._within_step: int | None = None
        self.ckpts = Checkpoints(ctx.resume_dir / "checkpoints")
        self.writer = CheckpointWriter(ctx, cfg, main=self.acc.is_main_process)
        self.start = 0
        self.stopped_by, self.stopped_at, self.published_from = "max_steps", self.total, self.total
        self.notes: list[str] = []
        self.eval_scores: list[tuple[int, float]] = []

    # -- checkpoints ---------------------------------------------------------------------------

    def save(self, step: int) -> None:
        import torch

        critic = self.models.critic.trainable() if self.models.critic is not None else {}
        self.ckpts.save(
            step,
            {
                "policy": self.models.policy.trainable(),
                "critic": critic,
                "within": self.snapshots["within"],
                "best": self.snapshots["best"],
            },
            {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": {
                    "sampling": self.sampling.get_state(),
                    "shuffling": self.shuffling.get_state(),
                    "torch": torch.get_rng_state(),
                },
            },
            {
                "kl_controller": self.controller.state_dict(),
                "moments": self.moments.state_dict(),
                "budget": self.budget.state_dict() if self.budget else None,
                "gold_stop": self.gold_stop.state_dict() if self.gold_stop else None,
                "best_step": self.best_step,
                "within_step": self._within_step,
                "eval_scores": self.eval_scores,
            },
        )

    def resume(self) -> None:
        import torch

        from stages.ppo.state import restore

        latest = self.ckpts.latest()
        if latest is None:
            return
        tensors, objects, state = self.ckpts.load(latest)
        restore(self.models.policy.trainable(), tensors["policy"])
        if self.models.critic is not None:
            restore(self.models.critic.trainable(), tensors["critic"])
        self.snapshots = {k: tensors.get(k, {}) for k in ("within", "best")}
        self.optimizer.load_state_dict(objects["optimizer"])
        self.scheduler.load_state_dict(objects["scheduler"])
        self.sampling.set_state(objects["rng"]["sampling"])
        self.shuffling.set_state(objects["rng"]["shuffling"])
        torch.set_rng_state(objects["rng"]["torch"])
        self.controller.load_state_dict(state["kl_controller"])
        self.moments.load_state_dict(state["moments"])
        if self.budget is not None and state["budget"]:
            self.budget.load_state_dict(state["budget"])
        if self.gold_stop is not None and state["gold_stop"]:
            self.gold_stop.load_state_dict(state["gold_stop"])
        self.best_step, self._within_step = state["best_step"], state["within_step"]
        self.eval_scores = [(int(s), float(v)) for s, v in state["eval_scores"]]
        self.start = int(state["step"])
        self.ctx.logger.info("resumed from %s (PPO step %d of %d)", latest.name, self.start, self.total)

    # -- stops ------------------------------------------------------------------------------------

    def _stop(
        self, reason: str, step: int, sentence: str, snapshot_name: str, weights_step: int | None
    ) -> None:
        from stages.ppo.state import restore

        self.stopped_by, self.stopped_at = reason, step
        saved = self.snapshots[snapshot_name]
        if saved:
            restore(self.models.policy.trainable(), saved)
            self.published_from = weights_step if weights_step is not None else step
            if snapshot_name == "within" or self.cfg.eval_steps is None:
                sentence += (
                    f" The published policy is the one that sampled step {self.published_from}'s batch."
                )
            else:
                sentence += f" The published policy is the one evaluated after step {self.published_from}."
        else:
            self.published_from = step
            sentence += " No earlier weights were kept: the published policy is the last one."
        self.notes.append(sentence)
        self.ctx.logger.warning(sentence)

    def _observe_gold(self, value: float, step: int) -> bool:
        """Feed the gold evaluation of the current weights to early stopping; True when it says stop."""
        from stages.ppo.state import snapshot

        if self.gold_stop is None:
            return False
        verdict = self.gold_stop.observe(value, step)
        if verdict == "best":
            self.snapshots["best"], self.best_step = snapshot(self.models.policy.trainable()), step
        if verdict == "stop":
            self._stop("gold_drop", step, self.gold_stop.sentence(step), "best", self.best_step)
            return True
        return False

    def _evaluate(self, step: int, history: Any) -> bool:
        """The held-out gold evaluation at ``step`` (weights after ``step`` updates); True to stop."""
        value = gold_evaluation(self.models, self.checked, self.cfg, self.acc.autocast)
        self.eval_scores.append((step, value))
        record = {"step": step, "split": "eval", "eval/gold_reward": value}
        self.ctx.log_metrics(**record)
        history.append(record)
        self.ctx.logger.info("step %d: held-out gold reward (greedy) %.4f", step, value)
        return self._observe_gold(value, step)

    # -- the loop ----------------------------------------------------------------------------------

    def run(self) -> StageResult:
        from stages.ppo.experience import collect
        from stages.ppo.kl_control import mean_kl_per_sequence
        from stages.ppo.report import rollout_rows, step_record
        from stages.ppo.state import History, RolloutStore, prompt_rows, snapshot
        from stages.ppo.update import optimise

        cfg, ctx, log = self.cfg, self.ctx, self.ctx.logger
        self.resume()
        history = History(ctx.resume_dir / "history.jsonl", keep_until=self.start)
        if self.start:
            ctx.replay_metrics(history.records())  # this attempt's metrics.jsonl and runs/: the whole run
        store = RolloutStore(ctx.resume_dir / "rollouts", keep_until=self.start)
        per_eval = cfg.eval_steps is not None
        log.info(
            "ppo: %d steps × %d prompts (%d training prompts), %s; models: %s",
            self.total,
            cfg.rollout_batch_size,
            len(self.checked.train),
            cfg.advantage_estimator,
            "; ".join(f"{h.role}: {h.what}" for h in self.models.held),
        )
        stop = False
        if per_eval and self.start == 0:
            stop = self._evaluate(0, history)
        step = self.start
        while not stop and step < self.total:
            step += 1
            cpu0, wall0 = time.process_time(), time.perf_counter()
            rows = prompt_rows(step, cfg.rollout_batch_size, len(self.checked.train), cfg.seed)
            exp = collect(
                self.models,
                self.checked.train,
                rows,
                cfg,
                tok=self.checked.tokenizer,
                stop_ids=self.checked.stop_ids,
                beta=self.controller.value,
                moments=self.moments,
                generator=self.sampling,
                autocast=self.acc.autocast,
            )
            exp.step = step
            if self.observer is not None:
                self.observer(exp)
            kl = mean_kl_per_sequence(exp.kl, exp.mask)
            record = step_record(exp, step, kl=kl, learning_rate=self.scheduler.get_last_lr()[0])
            if self.budget is not None:
                if self.budget.observe(kl, step=step):
                    self._stop("kl_budget", step, self.budget.sentence(), "within", self._within_step)
                    stop = True
                elif kl <= self.budget.max_kl_per_sequence:
                    self.snapshots["within"], self._within_step = (
                        snapshot(self.models.policy.trainable()),
                        step,
                    )
            if not stop and not per_eval and exp.gold is not None:
                stop = self._observe_gold(record["objective/gold_scores"], step)
            if not stop:
                t0 = time.perf_counter()
                record.update(
                    optimise(
                        exp,
                        self.models,
                        self.optimizer,
                        cfg,
                        acc=self.acc,
                        generator=self.shuffling,
                        step=step,
                        observer=self.observer,
                    )
                )
                self.scheduler.step()
                record["time/optimization"] = time.perf_counter() - t0
                self.controller.update(kl, len(exp))
            record["time/cpu"] = time.process_time() - cpu0
            record["time/step"] = time.perf_counter() - wall0
            ctx.log_metrics(**record)
            history.append(record)
            store.write(step, rollout_rows(exp, step, self.checked.train))
            if step % cfg.logging_steps == 0 or step == self.total or stop:
                log.info(
                    "step %d/%d proxy %.4f%s KL %.3f nats/seq β %.4g length %.1f clipfrac %s",
                    step,
                    self.total,
                    record["objective/scores"],
                    f" gold {record['objective/gold_scores']:.4f}"
                    if "objective/gold_scores" in record
                    else "",
                    kl,
                    exp.beta,
                    record["response_length"],
                    f"{record.get('policy/clipfrac_avg', float('nan')):.3f}",
                )
            if not stop and per_eval and (step % cfg.eval_steps == 0 or step == self.total):
                stop = self._evaluate(step, history)
            if not stop and self.writer.due(step):
                self.publish_checkpoint(step, record)
            if not stop and cfg.save_steps and step % cfg.save_steps == 0 and step < self.total:
                self.save(step)
        return self.publish(history, store, step)

    def publish_checkpoint(self, step: int, record: dict[str, Any]) -> None:
        """Checkpoint revision step-N of the ``policy`` output: the files the final policy has, the
        weights after N PPO steps (a stopped step publishes none: its weights are not the run's)."""
        from stages.ppo.models import save_policy

        repo, rev = _ref(self.ctx, BASE_INPUT if self.checked.policy_info.is_adapter else POLICY_INPUT)
        keys = ("objective/scores", "objective/gold_scores", "objective/kl", "eval/gold_reward")
        values = {k: record[k] for k in keys if k in record}
        if self.eval_scores and self.eval_scores[-1][0] == step:
            values["eval/gold_reward"] = self.eval_scores[-1][1]
        self.writer.save(
            step,
            lambda folder: save_policy(
                self.models.policy, self.checked.tokenizer, folder, repo=repo, revision=rev
            ),
            values,
        )

    # -- outputs ------------------------------------------------------------------------------------

    def publish(self, history: Any, store: Any, last_step: int) -> StageResult:
        from stages.lib.datasets import write_split
        from stages.ppo.models import save_policy
        from stages.ppo.report import PLOT, card_section, peak_memory, plot_reward_vs_kl

        ctx, cfg = self.ctx, self.cfg
        records = history.records()
        train = [r for r in records if r.get("split") == "train"]
        policy_out, rollouts_out = ctx.outputs["policy"], ctx.outputs["rollouts"]
        layout = self.models.policy.layout
        base_name = BASE_INPUT if self.checked.policy_info.is_adapter else POLICY_INPUT
        repo, rev = _ref(ctx, base_name)
        meta = save_policy(self.models.policy, self.checked.tokenizer, policy_out, repo=repo, revision=rev)
        table = store.table()
        if table is not None:
            import pyarrow.parquet as pq

            path = rollouts_out / "data" / "train-00000-of-00001.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, path)
        else:
            write_split(rollouts_out, "train", [])
        shutil.copyfile(history.path, policy_out / "metrics.jsonl")
        images = {}
        title = f"{cfg.kind}: reward against KL over {len(train)} steps"
        if plot_reward_vs_kl(records, policy_out / PLOT, title=title):
            shutil.copyfile(policy_out / PLOT, rollouts_out / PLOT)
            images["Proxy and gold reward against KL"] = PLOT
        mb, source = peak_memory()

        def mean_of(key: str) -> float:
            values = [r[key] for r in train if key in r]
            return sum(values) / len(values) if values else float("nan")

        metrics: dict[str, Any] = {
            "advantage_estimator": cfg.advantage_estimator,
            "critic": cfg.critic_source(),
            "policy_layout": layout,
            "reward": cfg.reward,
            "steps": last_step,
            "total_steps": self.total,
            "episodes": last_step * cfg.rollout_batch_size,
            "rollout_batch_size": cfg.rollout_batch_size,
            "stopped_by": self.stopped_by,
            "stopped_at_step": self.stopped_at if self.stopped_by != "max_steps" else last_step,
            "published_weights_step": self.published_from if self.stopped_by != "max_steps" else last_step,
            "resumed_from_step": self.start,
            "kl_coef_final": self.controller.value,
            "time_rollout_s": mean_of("time/rollout"),
            "time_scoring_s": mean_of("time/scoring"),
            "time_optimization_s": mean_of("time/optimization"),
            "models_held": [h.as_dict() for h in self.models.held],
            "distinct_parameters": self.models.distinct_parameters(),
            "peak_memory_mb": mb,
            "peak_memory_source": source,
        }
        for key, name in (
            ("objective/scores", "scores"),
            ("objective/gold_scores", "gold_scores"),
            ("objective/kl", "kl"),
            ("response_length", "response_length"),
        ):
            if train and key in train[0]:
                metrics[f"first_{name}"], metrics[f"last_{name}"] = train[0][key], train[-1][key]
        if self.eval_scores:
            metrics["eval_gold_before"] = self.eval_scores[0][1]
            metrics["eval_gold_after"] = self.eval_scores[-1][1]
        if self.budget is not None:
            metrics["kl_budget"] = self.budget.max_kl_per_sequence
            self.notes.append(self.budget.sentence())
        return StageResult(
            metrics=metrics,
            card_sections={"PPO": card_section(cfg, metrics, ["", *self.notes] if self.notes else [])},
            card_metadata=meta,
            images=images,
            revisions=self.writer.revisions(),
        )


def train(ctx: StageContext, cfg: Any, *, observer: Callable | None = None) -> StageResult:
    """Run the PPO stage. ``observer`` (for tests) is called with each step's ``Experience`` before the
    optimisation phase and with every ``update.MicroBatch`` of it."""
    return Run(ctx, cfg, observer).run()


__all__ = ["Run", "gold_evaluation", "train"]
