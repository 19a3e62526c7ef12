"""`hub:` settings for the hf backend, endpoint and token resolution, and token redaction."""

from __future__ import annotations

import pytest

from hubflow import constants
from hubflow.errors import ManifestError
from hubflow.manifest import load_manifest

STAGES = """
stages:
  - name: solo
    kind: python
    function: steps:solo
    output: model:team/solo
"""


def test_hf_settings_validate(write_manifest) -> None:
    m = load_manifest(
        write_manifest("hub: {backend: hf, endpoint: 'http://127.0.0.1:8000/', namespace: team}" + STAGES)
    )
    assert (m.hub.backend, m.hub.endpoint, m.hub.namespace, m.hub.private) == (
        "hf",
        "http://127.0.0.1:8000",
        "team",
        True,
    )
    for bad, says in [
        ("{backend: hf, endpoint: 'ftp://x'}", "must be an http:// or https:// URL"),
        ("{backend: hf, namespace: 'a/b'}", "is not a valid Hub namespace"),
        ("{backend: s3}", "hub.backend"),
        ("{backend: hf, privat: true}", "unknown field `hub.privat`"),
    ]:
        with pytest.raises(ManifestError, match="hub") as err:
            load_manifest(write_manifest(f"hub: {bad}" + STAGES))
        assert says in str(err.value)


def test_open_hub_endpoint_and_token(write_manifest, monkeypatch) -> None:
    from hubflow.hub import open_hub
    from hubflow.hub.hf import HfHub

    monkeypatch.setenv("HF_TOKEN", "hf_token_for_open_hub_1234")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9/")
    hub = open_hub(load_manifest(write_manifest("hub: {backend: hf}" + STAGES)))
    assert isinstance(hub, HfHub) and hub.endpoint == "http://127.0.0.1:9" and hub.private
    assert "hf_token" not in repr(hub)
    hub = open_hub(
        load_manifest(
            write_manifest("hub: {backend: hf, endpoint: 'https://hub.example', private: false}" + STAGES)
        )
    )
    assert hub.endpoint == "https://hub.example" and not hub.private
    monkeypatch.delenv("HF_ENDPOINT")
    assert (
        open_hub(load_manifest(write_manifest("hub: {backend: hf}" + STAGES))).endpoint
        == "https://huggingface.co"
    )
    assert constants.hf_token() == "hf_token_for_open_hub_1234"


def test_redact(monkeypatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefgh")
    monkeypatch.setenv("HUBFLOW_SERVE_TOKEN", "serve-secret")
    text = "tokens hf_abcdefgh and serve-secret and other-secret"
    assert constants.redact(text, "other-secret") == "tokens *** and *** and ***"
