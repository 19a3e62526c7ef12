"""Finding and loading a stage's tokenizer.

A stage takes its tokenizer from a ``tokenizer`` input when it has one, else from the model
repo (a full model, an adapter or its base: sft and the tokenizer stage save their tokenizer
next to the weights). Loading is local and never runs remote code.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hubflow.errors import StageInputError

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
)
DEFAULT_ORDER = ("tokenizer", "model", "base")
"""Inputs searched for tokenizer files, in order."""


def has_tokenizer(folder: Path | None) -> bool:
    return folder is not None and (
        (folder / "tokenizer.json").exists() or (folder / "tokenizer_config.json").exists()
    )


def tokenizer_folder(*candidates: tuple[str, Path | None]) -> tuple[str, Path] | None:
    """The first (input name, folder) that holds tokenizer files."""
    for name, folder in candidates:
        if folder is not None and has_tokenizer(Path(folder)):
            return name, Path(folder)
    return None


def load_tokenizer(folder: Path, *, input_name: str = "tokenizer") -> Any:
    from transformers import AutoTokenizer

    if not has_tokenizer(folder):
        raise StageInputError(
            f"input {input_name!r} has no tokenizer files (tokenizer.json / tokenizer_config.json)",
            hint="feed it a `tokenizer` stage's output or a model repo that ships its tokenizer",
        )
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)


def stage_tokenizer(
    inputs: Mapping[str, Path],
    *,
    order: Sequence[str] = DEFAULT_ORDER,
    chat_template: str | None = None,
    need_pad: bool = True,
) -> tuple[Any, str]:
    """(tokenizer, the input it came from): the first of ``order`` that ships tokenizer files.

    ``chat_template`` replaces the tokenizer's; ``need_pad`` gives a tokenizer without a pad token
    its eos as pad (refused when it has neither)."""
    found = tokenizer_folder(*((name, inputs.get(name)) for name in order))
    if found is None:
        present = [n for n in order if n in inputs]
        raise StageInputError(
            f"no tokenizer: none of the inputs {present or list(order)} ships tokenizer files "
            "(tokenizer.json / tokenizer_config.json)",
            hint="add `tokenizer: STAGE_OR_REF` (a tokenizer stage's output) to the stage's inputs",
        )
    name, folder = found
    tok = load_tokenizer(folder, input_name=name)
    if chat_template:
        tok.chat_template = chat_template
    if need_pad and tok.pad_token is None:
        if tok.eos_token is None:
            raise StageInputError(
                f"the tokenizer of input {name!r} has neither a pad nor an eos token",
                hint="give the tokenizer a pad token (the tokenizer stage sets <pad>)",
            )
        tok.pad_token = tok.eos_token
    return tok, name


def copy_tokenizer_files(src: Path, dest: Path) -> list[str]:
    """Copy the tokenizer files of ``src`` into ``dest``; returns the names copied."""
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dest / name)
            copied.append(name)
    return copied


def same_vocabulary(a: Any, b: Any) -> list[str]:
    """Differences between two tokenizers' vocabularies (empty when they agree): size, then up to
    five tokens whose ids differ, then special tokens (pad / eos / bos)."""
    out: list[str] = []
    va, vb = a.get_vocab(), b.get_vocab()
    if len(va) != len(vb):
        out.append(f"vocabulary sizes {len(va)} vs {len(vb)}")
    differ = sorted(t for t in set(va) | set(vb) if va.get(t) != vb.get(t))
    if differ:
        shown = ", ".join(f"{t!r}: {va.get(t)} vs {vb.get(t)}" for t in differ[:5])
        out.append(f"{len(differ)} token(s) with different ids ({shown})")
    for special in ("pad_token_id", "eos_token_id", "bos_token_id"):
        if getattr(a, special, None) != getattr(b, special, None):
            out.append(f"{special} {getattr(a, special, None)} vs {getattr(b, special, None)}")
    return out
