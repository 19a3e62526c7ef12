"""`hubflow run --jobs N`: which stages start, with which slots and GPUs (pure decisions)."""

from __future__ import annotations

import pytest

from hubflow.launch.threads import choose_threads
from hubflow.schedule import Need, Pool, blocked_by, default_jobs, gpu_env, machine_gpus, ready, to_start

# a -> c, b -> c, d alone; e after c
UP = {"a": [], "b": [], "c": ["a", "b"], "d": [], "e": ["c"]}


def test_ready_means_every_upstream_stage_is_done() -> None:
    assert ready(["a", "b", "c", "d", "e"], UP, done=set()) == ["a", "b", "d"]
    assert ready(["c", "d", "e"], UP, done={"a"}) == ["d"]
    assert ready(["c", "e"], UP, done={"a", "b"}) == ["c"]
    assert ready(["e"], UP, done={"a", "b", "c"}) == ["e"]


def test_a_failure_blocks_its_dependents_only_and_names_the_root_cause() -> None:
    assert blocked_by("c", UP, failed={"a"}, blocked={}) == "a"
    assert blocked_by("e", UP, failed={"a"}, blocked={"c": "a"}) == "a"  # through a blocked stage
    assert blocked_by("d", UP, failed={"a"}, blocked={"c": "a"}) is None
    assert blocked_by("b", UP, failed={"a"}, blocked={}) is None


def test_slots_are_never_oversubscribed() -> None:
    needs = {"a": Need(1), "b": Need(1), "d": Need(1)}
    assert [n for n, _ in to_start(["a", "b", "d"], needs, Pool(2), jobs=2)] == ["a", "b"]
    assert [n for n, _ in to_start(["b", "d"], needs, Pool(1), jobs=2)] == ["b"]  # one stage holds a slot
    assert to_start(["d"], needs, Pool(0), jobs=2) == []
    assert [n for n, _ in to_start(["a", "b", "d"], needs, Pool(1), jobs=1)] == ["a"]  # --jobs 1: in order


def test_a_big_stage_waits_for_its_slots_and_is_not_overtaken() -> None:
    needs = {"big": Need(cpus=2), "small": Need(cpus=1)}
    assert to_start(["big", "small"], needs, Pool(1), jobs=2) == []  # small waits behind big
    assert [n for n, _ in to_start(["big", "small"], needs, Pool(2), jobs=2)] == ["big"]
    huge = {"huge": Need(cpus=8)}  # more than the run has: it takes every slot and runs alone
    assert [n for n, _ in to_start(["huge"], huge, Pool(2), jobs=2)] == ["huge"]
    assert to_start(["huge"], huge, Pool(1), jobs=2) == []


def test_gpus_are_assigned_per_stage_and_never_shared() -> None:
    needs = {"train": Need(1, gpus=2), "eval": Need(1, gpus=1), "cpu": Need(1)}
    chosen = to_start(["train", "eval", "cpu"], needs, Pool(4, ["0", "1", "2"]), jobs=4)
    assert chosen == [("train", ["0", "1"]), ("eval", ["2"]), ("cpu", [])]
    assert to_start(["eval"], needs, Pool(4, []), jobs=4) == []  # waits for a GPU to come back
    assert gpu_env(["2"], needs["eval"]) == {"CUDA_VISIBLE_DEVICES": "2"}
    assert gpu_env(["0", "1"], needs["train"]) == {"CUDA_VISIBLE_DEVICES": "0,1"}
    assert gpu_env([], needs["cpu"]) == {}  # reserved none: the environment is left as it is


def test_the_machines_gpus_come_from_cuda_visible_devices_first() -> None:
    assert machine_gpus("0,2") == ["0", "2"]
    assert machine_gpus("GPU-1a2b, GPU-3c4d") == ["GPU-1a2b", "GPU-3c4d"]
    assert machine_gpus("") == [] and machine_gpus("-1") == []


@pytest.mark.parametrize(("cores", "env", "jobs"), [(2, None, 2), (16, None, 16), (16, 3, 3), (0, None, 1)])
def test_default_jobs(cores: int, env: int | None, jobs: int) -> None:
    assert default_jobs(cores, env) == jobs


def test_threads_auto_beside_other_stages_takes_its_slots_not_the_free_cores() -> None:
    # 2 idle cores, but a sibling starts next: each stage gets its one slot, not both cores
    assert choose_threads("auto", cores=2, busy=0.0, slots=1)[0] == 1
    n, why = choose_threads("auto", cores=8, busy=0.0, slots=3)
    assert n == 3 and "CPU slot" in why
    assert choose_threads("auto", cores=8, busy=6.0, slots=3)[0] == 2  # fewer free than its slots
    assert choose_threads("auto", cores=2, busy=0.0, slots=None)[0] == 2  # alone: every free core
    assert choose_threads(4, cores=2, busy=0.0, slots=1)[0] == 4  # a number is taken as it is
