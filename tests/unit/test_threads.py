"""resources.threads: auto gives torch the cores no other process is using (measured: BENCHMARKS.md)."""

from __future__ import annotations

import pytest

from hubflow.launch.threads import choose_threads, machine_state


@pytest.mark.parametrize(
    ("requested", "cores", "busy", "env", "threads", "says"),
    [
        ("auto", 2, 0.0, {}, 2, "2 of 2 cores free"),  # quiet: two threads are 1.6-1.8x faster
        ("auto", 2, 0.2, {}, 2, "2 of 2 cores free; other processes kept 0.2 busy"),
        ("auto", 2, 1.0, {}, 1, "1 of 2 cores free"),  # another job holds a core: one thread, not spinning
        ("auto", 2, 1.6, {}, 1, "1 of 2 cores free"),
        ("auto", 2, 9.0, {}, 1, "1 of 2 cores free"),  # never below one
        ("auto", 16, 3.4, {}, 13, "13 of 16 cores free"),
        ("auto", 8, 0.0, {"OMP_NUM_THREADS": "3"}, 3, "OMP_NUM_THREADS in the environment"),
        ("auto", 8, 0.0, {"OMP_NUM_THREADS": "x"}, 8, "8 of 8 cores free"),
        (4, 2, 0.0, {"OMP_NUM_THREADS": "1"}, 4, "resources.threads"),
    ],
)
def test_the_rule(requested, cores, busy, env, threads, says):
    n, why = choose_threads(requested, cores=cores, busy=busy, env=env)
    assert n == threads and says in why


def test_the_sample_sees_a_busy_core():
    import subprocess
    import sys

    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        cores, busy = machine_state(sample_seconds=0.5)
    finally:
        spin.kill()
        spin.wait()
    assert cores >= 1 and busy >= 0.6  # the spinning process holds (most of) one core


def test_a_threads_setting_validates_and_stays_out_of_the_fingerprint():
    from stages import synthetic

    base = {"name": "s", "kind": "synthetic", "outputs": {"prompts": "dataset:a/p"}}
    a = synthetic.Config(**base)
    b = synthetic.Config(**base, resources={"threads": 2})
    assert a.resources.threads == "auto" and b.resources.threads == 2 and a.settings() == b.settings()
    with pytest.raises(ValueError):
        synthetic.Config(**base, resources={"threads": "many"})
