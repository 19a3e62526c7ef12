"""``instruct``: multi-task instruction tuning (seed §3, pseudo-algorithm §3.7) -> a model or adapter.

Inputs: ``model`` (the base, with its tokenizer or a ``tokenizer`` input), one or
more instruction datasets (columns ``instruction``, ``output``, optionally
``input``, ``family``, ``rationale`` / ``cot``: the ``synthetic`` stage's
``instructions`` output as it is), and optionally ``heldout_inputs`` used only
for evaluation.

- Mixing (§3.5): the task families are sampled with p_k ∝ min(N_k, M)^(1/τ)
  (``temperature`` τ, ``cap`` M); the target and the realised mix are reported.
- Templates (§3.4, §3.7 step 1.1): each example is phrased by a template drawn at
  random from its family's set (``task_templates``, else ``templates``).
- Chain of thought (§3.6): ``cot_ratio`` of the examples carry their reasoning
  chain (a ``rationale`` column, or the rows flagged ``cot``).
- Formatting: the chat template; loss on the assistant's reply only.
- Evaluation (§3.7 step 3.4): before training, every ``eval_steps`` and at the end,
  the loss on each family of the evaluation split that training never saw
  (zero-shot), the loss on the seen families, and, when the ``synthetic`` stage's
  judge is installed, greedy-decoding accuracy per held-out family.

``peft`` and ``regularization`` work as in ``sft``; so does the output.
"""

from __future__ import annotations

from hubflow.stage import StageContext, StageResult
from stages.instruct.config import DEFAULT_TEMPLATES, Config

__all__ = ["DEFAULT_TEMPLATES", "LIBRARIES", "VERSION", "Config", "describe", "run"]

VERSION = "1"
LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate", "tokenizers")


def describe(cfg: Config) -> list[str]:
    cap = f", cap M={cfg.cap}" if cfg.cap else ""
    return [f"{cfg.peft.method} instruction tuning on {cfg.training_inputs()}: τ={cfg.temperature:g}{cap}"]


def run(ctx: StageContext, cfg: Config) -> StageResult:
    from stages.instruct.job import instruct

    return instruct(ctx, cfg)
