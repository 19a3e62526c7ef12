"""Reading YAML a pull request may have written: ``safe_load`` semantics, plus limits.

Manifests and locks are read by ``hubflow validate`` and ``plan`` in CI, on files anyone
proposing a change controls, so reading one must neither hang, nor grow without bound,
nor crash, nor silently drop data. On top of ``yaml.safe_load`` this loader

- refuses a duplicate key in a mapping, naming the key and both lines (YAML keeps the
  last one silently: a stage with ``output:`` twice would publish to the second);
- caps the size of the text (:data:`~hubflow.constants.MAX_MANIFEST_BYTES`);
- caps the nesting depth while composing (:data:`~hubflow.constants.MAX_YAML_DEPTH`):
  the C composer recurses without limit and crashes the process on deep input;
- caps the size of the document once every alias is expanded
  (:data:`~hubflow.constants.MAX_YAML_NODES`), before anything is built from it, so an
  alias bomb is refused in milliseconds; a recursive alias is refused too.

The parser is libyaml's where installed (events only: it does not recurse); composing
and constructing are PyYAML's Python code, with the checks above.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

from hubflow import constants
from hubflow.errors import ManifestError

try:
    from yaml.cyaml import CParser as _CParser
except ImportError:  # PyYAML without libyaml
    _CParser = None
_PARSING: tuple[type, ...] = (
    (_CParser,) if _CParser is not None else (yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser)
)
_MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlRefused(Exception):
    """The text breaks one of the limits; ``line`` is 1-based (None: the whole document)."""

    def __init__(self, message: str, hint: str, line: int | None = None) -> None:
        super().__init__(message)
        self.message, self.hint, self.line = message, hint, line


class _Loader(*_PARSING, SafeConstructor, Resolver):  # type: ignore[misc]
    def __init__(self, text: str) -> None:
        if _CParser is not None:
            _CParser.__init__(self, text)
        else:
            yaml.reader.Reader.__init__(self, text)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)
        Composer.__init__(self)  # type: ignore[arg-type]
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self._depth = 0
        self._nodes = 0  # composed so far: without an alias, the expanded size
        self._aliased = False

    # Python's composer (the C one recurses without a limit); depth checked on the way down.
    compose_document = Composer.compose_document
    compose_scalar_node = Composer.compose_scalar_node
    compose_sequence_node = Composer.compose_sequence_node
    compose_mapping_node = Composer.compose_mapping_node

    def get_single_node(self) -> Node | None:
        node = Composer.get_single_node(self)  # type: ignore[arg-type]
        if node is None:
            return None
        if self._aliased:
            _check_expansion(node)
        elif self._nodes > constants.MAX_YAML_NODES:  # no alias: what was composed is the whole document
            raise YamlRefused(
                f"it holds more than {constants.MAX_YAML_NODES:,} values",
                hint="a manifest holds stage configs, not data: move large lists into files the stages read",
            )
        return node

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        self._depth += 1
        try:
            if self._depth > constants.MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark
                raise YamlRefused(
                    f"nested more than {constants.MAX_YAML_DEPTH} levels deep",
                    hint="flatten the structure (a stage's config never needs that depth)",
                    line=mark.line + 1 if mark else None,
                )
            self._nodes += 1
            if not self._aliased and self.check_event(AliasEvent):
                self._aliased = True
            return Composer.compose_node(self, parent, index)  # type: ignore[arg-type]
        finally:
            self._depth -= 1

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, ScalarNode):
                continue
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise YamlRefused(
                    f"key {key!r} appears twice in one mapping (first on line {seen[key]})",
                    hint=f"keep one `{key}:` (YAML would silently keep only the last one)",
                    line=line,
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _check_expansion(root: Node) -> None:
    """Refuse a document whose alias-expanded size or depth is over the caps (iterative: an
    alias chain may be deeper than Python's recursion limit)."""
    done: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded nodes, expanded depth)
    active: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in done:
            continue
        kids = _children(node)
        if not children_done:
            if key in active:
                continue
            active.add(key)
            stack.append((node, True))
            for kid in kids:
                if id(kid) in active and id(kid) not in done:
                    raise YamlRefused(
                        "an alias refers to a node that contains it (a recursive alias)",
                        hint="replace the alias by a copy of the data",
                        line=kid.start_mark.line + 1,
                    )
                if id(kid) not in done:
                    stack.append((kid, False))
            continue
        size = 1 + sum(done[id(k)][0] for k in kids)
        depth = 1 + max((done[id(k)][1] for k in kids), default=0)
        if size > constants.MAX_YAML_NODES or depth > constants.MAX_YAML_DEPTH:
            raise YamlRefused(
                f"aliases expand it to more than {constants.MAX_YAML_NODES:,} values"
                if size > constants.MAX_YAML_NODES
                else f"aliases nest it more than {constants.MAX_YAML_DEPTH} levels deep",
                hint="write the data out instead of multiplying it with aliases (`&`, `*`)",
                line=node.start_mark.line + 1,
            )
        done[key] = (size, depth)
        active.discard(key)


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def load_text(text: str) -> Any:
    """``yaml.safe_load(text)`` with the checks above; raises :class:`YamlRefused` or ``yaml.YAMLError``."""
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_text(path: Path, what: str, cap: int) -> str:
    """The UTF-8 text of ``path`` (a manifest or lock), at most ``cap`` bytes long."""
    with open(path, "rb") as f:
        data = f.read(cap + 1)
    if len(data) > cap:
        raise ManifestError(
            f"{what} {path} is larger than {cap // (1 << 20)} MiB",
            hint="a manifest holds stage configs, not data: move large lists into files the stages read",
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(
            f"{what} {path} is not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start})",
            hint="save it as UTF-8 YAML; a binary or differently encoded file cannot be a manifest",
        ) from None


def load_file(path: Path, what: str = "manifest", cap: int = constants.MAX_MANIFEST_BYTES) -> Any:
    """Read and parse ``path``; every problem is one :class:`ManifestError` naming the file (and line).

    OSError (a missing file, a folder) is the caller's to report."""
    text = read_text(path, what, cap)
    try:
        return load_text(text)
    except YamlRefused as exc:
        at = f", line {exc.line}" if exc.line else ""
        raise ManifestError(f"{path}{at}: {exc.message}", hint=exc.hint) from None
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path}: not valid YAML: {exc}") from None
