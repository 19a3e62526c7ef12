"""Stage tests train tiny models in-process."""

import pytest


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Tiny models gain nothing from a second torch thread, and on a busy machine its spinning costs several x."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TASK_FAMILIES = ("max", "min")
TASK_KNOBS = {"max_number": 9, "max_items": 4}


@pytest.fixture(scope="session")
def synthetic_tasks(tmp_path_factory):
    """The synthetic stage's four outputs (instructions, preferences, feedback, prompts) for the `max` and
    `min` families with small numbers, conversational format: folder per output name."""
    from stages import synthetic
    from stages.lib.testing import stage_context

    root = tmp_path_factory.mktemp("synthetic")
    outs = {name: root / name for name in synthetic.OUTPUT_KINDS}
    for folder in outs.values():
        folder.mkdir()
    ctx = stage_context(root / "stage", {})
    ctx.outputs = dict(outs)
    cfg = synthetic.Config(
        name="tasks",
        kind="synthetic",
        families=list(TASK_FAMILIES),
        num_examples=300,
        test_fraction=0.2,
        seed=7,
        outputs={name: f"dataset:test/{name}" for name in outs},
        **TASK_KNOBS,
    )
    synthetic.run(ctx, cfg)
    return outs


@pytest.fixture(scope="session")
def policy_factory(tmp_path_factory, synthetic_tasks):
    """``make(steps=120, seed=0) -> folder``: a tiny chat policy SFT-trained on the `instructions` train
    split (mediocre by design: see stages.lib.testing.train_tiny_policy); cached per (steps, seed)."""
    from stages.lib.datasets import read_rows
    from stages.lib.testing import train_tiny_policy

    rows = read_rows(
        synthetic_tasks["instructions"], "train", ["prompt", "completion"], input_name="instructions"
    )
    pairs = [(r["prompt"], r["completion"]) for r in rows]
    made: dict[tuple[int, int], object] = {}

    def make(steps: int = 120, seed: int = 0):
        key = (steps, seed)
        if key not in made:
            made[key] = train_tiny_policy(
                tmp_path_factory.mktemp(f"policy-{steps}-{seed}"), pairs, steps=steps, seed=seed
            )
        return made[key]

    return make
