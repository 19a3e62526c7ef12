"""The ``ppo`` stage kind: RLHF policy optimisation with PPO on accelerate + torch (seed §4.4, §4.5 phase 3).

The kind module (``Config``, ``run``) is still to be written. What exists so far is the pure math layer,
torch only, imported by the rollout loop:

- ``rewards``: per-token KL penalties, per-token rewards, reward normalisation (``RunningMoments``);
- ``advantages``: the advantage estimators (GAE, REINFORCE++, GRPO, RLOO) behind one signature;
- ``objectives``: clipped policy and value losses, entropy, token log-probs;
- ``kl_control``: fixed and adaptive KL coefficients, the hard KL budget (seed §4.12).
"""
