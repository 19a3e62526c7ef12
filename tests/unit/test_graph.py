import pytest

from hubflow.errors import GraphError
from hubflow.graph import Edge, build_graph
from hubflow.refs import Ref, RepoRef


def repo(name: str, kind: str = "dataset") -> RepoRef:
    return RepoRef(kind, f"t/{name}")


def g(spec):
    """spec: name -> (inputs, {output: repo})"""
    return build_graph(spec)


def test_topological_order_keeps_manifest_order_for_ties():
    graph = g(
        {
            "c": ({"x": "b"}, {"output": repo("c")}),
            "a": ({}, {"output": repo("a")}),
            "b": ({"x": "a"}, {"output": repo("b")}),
            "d": ({}, {"output": repo("d")}),
        }
    )
    assert graph.order == ["a", "b", "c", "d"]  # among ready stages, the earliest in the file first
    assert graph.nodes["c"].stage_inputs == {"x": Edge("b")}
    assert graph.downstream_of(["a"]) == {"a", "b", "c"}
    assert graph.upstream_of(["c"]) == {"a", "b", "c"}


def test_named_outputs_and_external_refs():
    graph = g(
        {
            "ppo": (
                {"model": "model:org/base@" + "1" * 40},
                {"policy": repo("p", "model"), "rollouts": repo("r")},
            ),
            "eval": ({"data": "ppo.rollouts", "m": "ppo.policy"}, {"output": repo("e")}),
        }
    )
    assert graph.nodes["eval"].stage_inputs == {"data": Edge("ppo", "rollouts"), "m": Edge("ppo", "policy")}
    assert graph.nodes["ppo"].external_inputs == {"model": Ref("model", "org/base", "1" * 40)}


def test_an_unpinned_ref_to_a_repo_a_stage_writes_becomes_an_edge():
    graph = g({"a": ({}, {"output": repo("a")}), "b": ({"x": "dataset:t/a"}, {"output": repo("b")})})
    assert graph.nodes["b"].stage_inputs == {"x": Edge("a")}
    assert graph.order == ["a", "b"]


def test_cycle_names_the_stages_on_it():
    with pytest.raises(GraphError) as exc:
        g(
            {
                "a": ({"x": "c"}, {"output": repo("a")}),
                "b": ({"x": "a"}, {"output": repo("b")}),
                "c": ({"x": "b"}, {"output": repo("c")}),
                "d": ({"x": "a"}, {"output": repo("d")}),
            }
        )
    msg = str(exc.value)
    assert "cycle" in msg and "a -> b -> c -> a" in msg


def test_dangling_input():
    with pytest.raises(GraphError, match="'nope' names no stage and is not a ref"):
        g({"a": ({"x": "nope"}, {"output": repo("a")})})


def test_missing_named_output():
    with pytest.raises(GraphError, match="stage 'a' has no output 'zz'"):
        g({"a": ({}, {"output": repo("a")}), "b": ({"x": "a.zz"}, {"output": repo("b")})})


def test_two_stages_writing_one_repo():
    with pytest.raises(GraphError, match="stages 'a' and 'b' both write dataset:t/x"):
        g({"a": ({}, {"output": repo("x")}), "b": ({}, {"output": repo("x")})})


def test_self_loop():
    with pytest.raises(GraphError, match="cycle|its own output"):
        g({"a": ({"x": "a"}, {"output": repo("a")})})
