from hubflow.fingerprint import canonical_json, diff_paths, digest, stage_fingerprint, static_components
from hubflow.manifest import parse_stage


def test_canonical_json_ignores_key_order():
    assert canonical_json({"b": 1, "a": {"y": 2, "x": [1, 2]}}) == canonical_json(
        {"a": {"x": [1, 2], "y": 2}, "b": 1}
    )
    assert digest({"a": 1}) != digest({"a": 2})


def _static(raw):
    cfg = parse_stage(raw, "test")
    return static_components(kind=cfg.kind, version="1", settings=cfg.settings(), libraries=[])


def test_defaults_filled_so_explicit_default_equals_omitted():
    base = {"name": "s", "kind": "python", "function": "m:f", "output": "dataset:a/b"}
    explicit = {**base, "params": {}, "resources": {"num_processes": 1}}
    assert _static(base) == _static(explicit)


def test_name_description_and_output_do_not_change_the_fingerprint_but_config_does():
    base = {"name": "s", "kind": "python", "function": "m:f", "output": "dataset:a/b"}
    other = {**base, "name": "t", "description": "x", "output": "dataset:a/c"}
    assert _static(base) == _static(other)
    assert _static(base) != _static({**base, "params": {"k": 1}})
    assert _static(base) == _static({**base, "resources": {"timeout_minutes": 5}})


def test_inputs_change_the_fingerprint_and_are_stable():
    st = _static({"name": "s", "kind": "python", "function": "m:f", "output": "dataset:a/b"})
    fp1, comp = stage_fingerprint(st, {"x": "dataset:a/z@" + "1" * 40})
    fp2, _ = stage_fingerprint(st, {"x": "dataset:a/z@" + "2" * 40})
    assert fp1 != fp2 and len(fp1) == 64
    assert fp1 == stage_fingerprint(st, {"x": "dataset:a/z@" + "1" * 40})[0]
    assert comp["inputs"] == {"x": "dataset:a/z@" + "1" * 40}


def test_diff_paths():
    assert diff_paths({"a": 1, "b": {"c": 2, "d": 3}}, {"a": 1, "b": {"c": 5}, "e": 0}) == ["b.c", "b.d", "e"]
    assert diff_paths([1], [2]) == ["(value)"]
