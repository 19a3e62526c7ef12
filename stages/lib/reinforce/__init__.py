"""The REINFORCE-family core that the ``grpo`` and ``rloo`` kinds share (seed §4.2 "Policy Optimization (PPO,
REINFORCE)", §4.4 objective, §4.12 reward hacking).

Both kinds drive a TRL 1.16 trainer (``GRPOTrainer`` / ``RLOOTrainer``) on a policy, a prompt dataset and
a reward, and differ only in TRL's trainer, its config class and a few method fields:

- ``config``: :class:`ReinforceConfig`, the training vocabulary plus the fields TRL's two configs share
  (TRL's names), the reward source and the monitor (pydantic only: imported at validate time);
- ``inputs``: the checks that run before any weight is loaded or any token sampled;
- ``scoring``: the reward TRL calls (reward model / ensemble / gold judge on the tokens the policy
  sampled), which also records every completion with its proxy and gold reward and measures KL;
- ``monitor``: windows of proxy and gold reward against KL, ``stop_when_gold_drops``, the KL budget,
  the over-optimisation plot;
- ``train``: loading the policy, building TRL's config and trainer, resuming, saving both outputs.

Heavy libraries are imported inside functions only.
"""
