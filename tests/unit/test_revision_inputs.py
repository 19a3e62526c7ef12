"""`STAGE@LABEL` inputs: the graph edge carries the label, a label the producer cannot publish fails when the
manifest loads (the message says why), and the planner resolves the label to the producer's CURRENT result's
revision (tag LABEL-<fingerprint[:12]>), so a changed producer re-runs the stage that reads its checkpoint."""

from __future__ import annotations

import pytest

from hubflow.errors import GraphError
from hubflow.fingerprint import stage_fingerprint
from hubflow.graph import Edge, build_graph, check_revision_inputs, revision_tag
from hubflow.lock import LockEntry
from hubflow.plan import fingerprint_tag, make_plan
from hubflow.refs import RepoRef

LM = RepoRef("model", "t/lm")
EV = RepoRef("dataset", "t/ev")


def test_labelled_inputs_are_edges_with_their_label():
    graph = build_graph(
        {
            "lm": ({}, {"output": LM}),
            "rl": ({}, {"policy": RepoRef("model", "t/rl"), "rollouts": RepoRef("dataset", "t/ro")}),
            "a": ({"model": "lm@step-400"}, {"output": RepoRef("dataset", "t/a")}),
            "b": ({"model": "rl.policy@step-2"}, {"output": RepoRef("dataset", "t/b")}),
            "c": ({"model": "model:t/lm@step-400"}, {"output": RepoRef("dataset", "t/c")}),
            "d": ({"model": "model:t/lm@" + "a" * 40}, {"output": RepoRef("dataset", "t/d")}),
        }
    )
    assert graph.nodes["a"].stage_inputs["model"] == Edge("lm", "output", "step-400")
    assert str(graph.nodes["b"].stage_inputs["model"]) == "rl.policy@step-2"
    assert graph.nodes["c"].stage_inputs["model"] == Edge(
        "lm", "output", "step-400"
    )  # the repo a stage writes
    assert "model" in graph.nodes["d"].external_inputs  # a pinned commit stays an external input
    assert graph.order.index("lm") < graph.order.index("a")
    assert revision_tag("step-400", "0123456789abcdef" * 4) == "step-400-0123456789ab"
    with pytest.raises(GraphError, match="'latest' is not a revision label"):
        build_graph({"lm": ({}, {"output": LM}), "a": ({"model": "lm@latest"}, {"output": EV})})


def _pretrain(**kw):
    from stages.pretrain.config import Config

    fields = {"inputs": {"tokenizer": "t", "data": "d"}, "output": "model:t/lm", "max_steps": 600, **kw}
    return Config(name="lm", kind="pretrain", **fields)


@pytest.mark.parametrize(
    ("fields", "label", "message"),
    [
        ({}, "step-400", "stage 'lm' publishes no checkpoints: give it `checkpoints: {every: K}`"),
        (
            {"checkpoints": {"every": 200}},
            "step-300",
            "every 200 steps: step-300 is not one (try step-200 or step-400)",
        ),
        ({"checkpoints": {"every": 200}}, "step-800", "stage 'lm' trains 600 steps: there is no step-800"),
        ({"checkpoints": {"every": 200}}, "round-1", "'round-1' is not a checkpoint label"),
    ],
)
def test_a_label_the_producer_cannot_publish_fails_with_why(fields, label, message):
    from stages.evaluate.config import Config as Evaluate

    configs = {
        "lm": _pretrain(**fields),
        "ev": Evaluate(
            name="ev", kind="evaluate", inputs={"model": f"lm@{label}", "data": "d"}, output="dataset:t/ev"
        ),
    }
    graph = build_graph({"lm": ({}, {"output": LM}), "ev": ({"model": f"lm@{label}"}, {"output": EV})})
    with pytest.raises(GraphError) as err:
        check_revision_inputs(graph, configs)
    assert (
        f"stage 'ev', input 'model' reads lm@{label}: " in err.value.message and message in err.value.message
    )
    configs["lm"] = _pretrain(checkpoints={"every": 200})
    ok = build_graph({"lm": ({}, {"output": LM}), "ev": ({"model": "lm@step-600"}, {"output": EV})})
    check_revision_inputs(ok, configs)  # the last step is a checkpoint too


def test_other_kinds_say_what_they_publish():
    from stages.evaluate.config import Config as Evaluate

    ev = Evaluate(name="ev", kind="evaluate", inputs={"model": "m", "data": "d"}, output="dataset:t/ev")
    assert "publishes no intermediate revisions" in ev.revision_problem("output", "step-1")
    with pytest.raises(ValueError, match="checkpoints.every 700 is more than the 600 steps"):
        _pretrain(checkpoints={"every": 700})
    assert _pretrain(checkpoints={"every": 200}).settings()["checkpoints"] == {"every": 200}  # hashed


STATIC = {
    n: {"schema": 1, "kind": "python", "version": "1", "code": {}, "extra": {}, "config": {"lr": 1}}
    for n in ("lm", "ev")
}
GRAPH = build_graph({"lm": ({}, {"output": LM}), "ev": ({"model": "lm@step-2"}, {"output": EV})})
KINDS = {"lm": "python", "ev": "python"}


def _published(lr: int) -> tuple[dict, str, str]:
    """tags of lm's result with config lr (its final commit and its step-2 checkpoint), its fp, the checkpoint."""
    st = {**STATIC, "lm": {**STATIC["lm"], "config": {"lr": lr}}}
    fp, _ = stage_fingerprint(st["lm"], {})
    ckpt = f"{lr:x}" * 40
    return {fingerprint_tag(fp): "f" * 40, revision_tag("step-2", fp): ckpt}, fp, ckpt


def test_the_planner_reads_the_current_results_checkpoint():
    lm_tags, fp, ckpt = _published(1)
    st = dict(STATIC)
    plan = make_plan(GRAPH, static=st, kinds=KINDS, external={}, tags={LM: lm_tags}, lock={})
    by = {p.name: p for p in plan}
    assert by["lm"].action == "skip" and by["ev"].inputs == {"model": f"{LM}@{ckpt}"}
    ev_fp, comp = stage_fingerprint(st["ev"], by["ev"].inputs)
    tags = {LM: lm_tags, EV: {fingerprint_tag(ev_fp): "e" * 40}}
    lock = {"ev": LockEntry("python", ev_fp, by["ev"].inputs, {"output": f"{EV}@{'e' * 40}"}, comp)}
    assert {
        p.name: p.action for p in make_plan(GRAPH, static=st, kinds=KINDS, external={}, tags=tags, lock=lock)
    } == {"lm": "skip", "ev": "skip"}

    # lm changed (and was published elsewhere): ev reads the new result's checkpoint, so it re-runs
    new_tags, _, new_ckpt = _published(2)
    st2 = {**st, "lm": {**st["lm"], "config": {"lr": 2}}}
    by = {
        p.name: p
        for p in make_plan(
            GRAPH, static=st2, kinds=KINDS, external={}, tags={LM: new_tags, EV: tags[EV]}, lock=lock
        )
    }
    assert by["ev"].action == "run" and by["ev"].inputs == {"model": f"{LM}@{new_ckpt}"}
    assert by["ev"].reasons[0].startswith("input changed: model")

    # a result without that revision: the stage is planned to run and the run says what is missing
    del lm_tags[revision_tag("step-2", fp)]
    by = {
        p.name: p for p in make_plan(GRAPH, static=st, kinds=KINDS, external={}, tags={LM: lm_tags}, lock={})
    }
    assert by["ev"].action == "run" and "has no revision step-2" in by["ev"].reasons[0]


def test_online_dpo_rounds_are_its_revisions():
    from stages.online_dpo.config import Config

    cfg = Config(
        name="odpo",
        kind="online_dpo",
        reward="synthetic",
        inputs={"model": "model:t/policy", "prompts": "tasks.prompts"},
        rounds=2,
        outputs={"policy": "model:t/odpo", "pairs": "dataset:t/pairs"},
    )
    assert cfg.revision_problem("policy", "round-2") is None and cfg.k >= 1
    assert "runs 2 round(s): there is no round-3" in cfg.revision_problem("policy", "round-3")
    assert "publishes round-1 .. round-2" in cfg.revision_problem("pairs", "step-1")
