"""The `hf` backend: the Hub protocol over a Hugging Face Hub endpoint (or `hubflow serve`)."""

from hubflow.hub.hf.hub import HfHub

__all__ = ["HfHub"]
