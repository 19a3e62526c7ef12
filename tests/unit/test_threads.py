"""resources.threads: auto picks one thread for small models and the free cores for larger ones."""

from __future__ import annotations

import pytest

from hubflow.launch.threads import SMALL_MODEL, choose_threads, parameters_of_config


@pytest.mark.parametrize(
    ("requested", "cores", "load", "params", "env", "threads", "says"),
    [
        ("auto", 2, 0.0, 1_000_000, {}, 1, "a second thread does not help a model this small"),
        ("auto", 2, 1.0, 1_000_000, {}, 1, "1.0M parameters"),
        ("auto", 2, 0.1, 120_000_000, {}, 2, "2 of 2 cores free"),
        ("auto", 2, 1.2, 120_000_000, {}, 1, "1 of 2 cores free, load 1.2"),  # another job holds a core
        ("auto", 16, 3.4, 120_000_000, {}, 13, "13 of 16 cores free"),
        ("auto", 2, 9.0, None, {}, 1, "model size unknown; 1 of 2 cores free"),  # never below one
        ("auto", 8, 0.0, SMALL_MODEL + 1, {}, 8, "8 of 8 cores free"),
        ("auto", 8, 0.0, 1_000_000, {"OMP_NUM_THREADS": "3"}, 3, "OMP_NUM_THREADS in the environment"),
        (4, 2, 0.0, 1_000, {"OMP_NUM_THREADS": "1"}, 4, "resources.threads"),
    ],
)
def test_the_rule(requested, cores, load, params, env, threads, says):
    n, why = choose_threads(requested, cores=cores, load=load, params=params, env=env)
    assert n == threads and says in why


def test_parameters_from_a_config():
    llama = {"hidden_size": 128, "num_hidden_layers": 4, "intermediate_size": 352, "vocab_size": 2048}
    assert parameters_of_config(llama) == 4 * (4 * 128 * 128 + 3 * 128 * 352) + 2048 * 128
    assert parameters_of_config({"text_config": llama}) == parameters_of_config(llama)
    assert parameters_of_config({"architectures": ["X"]}) is None


def test_a_threads_setting_validates_and_stays_out_of_the_fingerprint():
    from stages import synthetic

    base = {"name": "s", "kind": "synthetic", "outputs": {"prompts": "dataset:a/p"}}
    a = synthetic.Config(**base)
    b = synthetic.Config(**base, resources={"threads": 2})
    assert a.resources.threads == "auto" and b.resources.threads == 2 and a.settings() == b.settings()
    with pytest.raises(ValueError):
        synthetic.Config(**base, resources={"threads": "many"})
