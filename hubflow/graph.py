"""The stage DAG: edges from inputs to the stages that produce them.

Built from plain data (stage name -> inputs and outputs), so it is testable
without a manifest or a hub.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from hubflow.errors import GraphError, RefError
from hubflow.refs import Ref, RepoRef, looks_like_ref, parse_ref
from hubflow.stage import SINGLE_OUTPUT


@dataclass(frozen=True)
class Edge:
    """An input fed by another stage's output."""

    stage: str
    output: str = SINGLE_OUTPUT
    revision: str | None = None
    """A revision label (``step-400``, ``round-2``): that intermediate revision of the stage's output, the
    commit tagged ``LABEL-<fingerprint[:12]>`` on its ``checkpoints`` branch; None: its final result."""

    def __str__(self) -> str:
        text = self.stage if self.output == SINGLE_OUTPUT else f"{self.stage}.{self.output}"
        return f"{text}@{self.revision}" if self.revision else text


REVISION_LABEL = re.compile(r"^[A-Za-z][A-Za-z0-9_]*-[0-9]+$")
"""What a revision label looks like (``step-400``, ``round-2``): ``model:NS/NAME@step-400`` of a repo a
stage here writes means that stage's checkpoint, not a tag of that name."""


def revision_tag(label: str, fingerprint: str) -> str:
    """The tag of revision ``label`` of the result with ``fingerprint`` (``hubflow.runner`` makes it)."""
    return f"{label}-{fingerprint[:12]}"


@dataclass
class Node:
    name: str
    outputs: dict[str, RepoRef]
    stage_inputs: dict[str, Edge] = field(default_factory=dict)
    external_inputs: dict[str, Ref] = field(default_factory=dict)

    @property
    def upstream(self) -> set[str]:
        return {e.stage for e in self.stage_inputs.values()}


@dataclass
class Graph:
    nodes: dict[str, Node]
    order: list[str]
    """Topological order; ties keep the manifest's order."""

    def downstream_of(self, names: Iterable[str]) -> set[str]:
        """``names`` and every stage that depends on them, transitively."""
        children: dict[str, set[str]] = {n: set() for n in self.nodes}
        for node in self.nodes.values():
            for up in node.upstream:
                children[up].add(node.name)
        seen: set[str] = set()
        stack = list(names)
        while stack:
            n = stack.pop()
            if n not in seen:
                seen.add(n)
                stack.extend(children[n])
        return seen

    def upstream_of(self, names: Iterable[str]) -> set[str]:
        """``names`` and every stage they depend on, transitively."""
        seen: set[str] = set()
        stack = list(names)
        while stack:
            n = stack.pop()
            if n not in seen:
                seen.add(n)
                stack.extend(self.nodes[n].upstream)
        return seen


def _find_cycle(nodes: Mapping[str, Node], remaining: set[str]) -> list[str]:
    """One cycle among ``remaining`` (every one of them is on or behind a cycle)."""
    start = min(remaining)
    path: list[str] = []
    index: dict[str, int] = {}
    n = start
    while n not in index:
        index[n] = len(path)
        path.append(n)
        n = sorted(u for u in nodes[n].upstream if u in remaining)[0]
    cycle = path[index[n] :]
    cycle.reverse()  # upstream first: a -> b means b reads a
    first = min(range(len(cycle)), key=lambda i: list(nodes).index(cycle[i]))
    cycle = cycle[first:] + cycle[:first]  # start at the stage written first in the manifest
    return [*cycle, cycle[0]]


def build_graph(
    stages: Mapping[str, tuple[Mapping[str, str], Mapping[str, RepoRef]]],
) -> Graph:
    """``stages``: name -> (inputs as written, outputs). Raises :class:`GraphError`."""
    writers: dict[RepoRef, str] = {}
    for name, (_, outputs) in stages.items():
        for out_name, repo in outputs.items():
            if repo in writers:
                raise GraphError(
                    f"stages {writers[repo]!r} and {name!r} both write {repo}",
                    hint="give each stage its own output repo",
                )
            writers[repo] = f"{name}" if out_name == SINGLE_OUTPUT else f"{name}.{out_name}"

    nodes: dict[str, Node] = {}
    for name, (inputs, outputs) in stages.items():
        node = Node(name=name, outputs=dict(outputs))
        for input_name, target in inputs.items():
            if looks_like_ref(target):
                try:
                    ref = parse_ref(target)
                except RefError as exc:
                    raise GraphError(
                        f"stage {name!r}, input {input_name!r}: {exc.message}", exc.hint
                    ) from None
                label = ref.revision if ref.revision and REVISION_LABEL.match(ref.revision) else None
                writer = writers.get(ref.repo) if ref.revision is None or label else None
                if writer is not None:  # the repo a stage here writes: use that stage's result
                    stage, _, out = writer.partition(".")
                    node.stage_inputs[input_name] = Edge(stage, out or SINGLE_OUTPUT, label)
                else:
                    node.external_inputs[input_name] = ref
                continue
            target, at, label = target.partition("@")
            if at and not REVISION_LABEL.match(label):
                raise GraphError(
                    f"stage {name!r}, input {input_name!r}: {label!r} is not a revision label",
                    hint="write STAGE@LABEL with a label such as step-400 (a checkpoint) or round-2 (a round)",
                )
            stage, dot, out = target.partition(".")
            if stage not in stages:
                raise GraphError(
                    f"stage {name!r}, input {input_name!r}: {target!r} names no stage and is not a ref",
                    hint=f"use a stage name ({', '.join(stages)}) or a ref like dataset:NAMESPACE/NAME@REVISION",
                )
            up_outputs = stages[stage][1]
            out = out if dot else SINGLE_OUTPUT
            if out not in up_outputs:
                raise GraphError(
                    f"stage {name!r}, input {input_name!r}: stage {stage!r} has no output {out!r}",
                    hint=f"its outputs are: {', '.join(f'{stage}.{o}' if o != SINGLE_OUTPUT else stage for o in up_outputs)}",
                )
            if stage == name:
                raise GraphError(f"stage {name!r} reads its own output (input {input_name!r})")
            node.stage_inputs[input_name] = Edge(stage, out, label or None)
        nodes[name] = node

    # Kahn's algorithm; ties broken by manifest order.
    position = {n: i for i, n in enumerate(nodes)}
    pending = {n: len(node.upstream) for n, node in nodes.items()}
    children: dict[str, list[str]] = {n: [] for n in nodes}
    for node in nodes.values():
        for up in node.upstream:
            children[up].append(node.name)
    ready = sorted((n for n, c in pending.items() if c == 0), key=position.__getitem__)
    order: list[str] = []
    while ready:
        n = ready.pop(0)
        order.append(n)
        for child in children[n]:
            pending[child] -= 1
            if pending[child] == 0:
                ready.append(child)
                ready.sort(key=position.__getitem__)
    if len(order) != len(nodes):
        cycle = _find_cycle(nodes, set(nodes) - set(order))
        raise GraphError(
            f"the stages form a cycle: {' -> '.join(cycle)}",
            hint="an input must come from a stage that does not depend on this one",
        )
    return Graph(nodes=nodes, order=order)


def graph_from_manifest(manifest: object) -> Graph:
    stages = manifest.stages  # type: ignore[attr-defined]
    graph = build_graph({name: (cfg.inputs, cfg.output_repos()) for name, cfg in stages.items()})
    check_revision_inputs(graph, stages)
    return graph


def check_revision_inputs(graph: Graph, configs: Mapping[str, object]) -> None:
    """Every ``STAGE@LABEL`` input names a revision its stage can publish (``StageConfig.revision_problem``:
    checkpoints off, a step the cadence skips, past the last step...). Raises :class:`GraphError`."""
    for name in graph.order:
        for input_name, edge in graph.nodes[name].stage_inputs.items():
            if edge.revision is None:
                continue
            problem = configs[edge.stage].revision_problem(edge.output, edge.revision)  # type: ignore[attr-defined]
            if problem:
                raise GraphError(
                    f"stage {name!r}, input {input_name!r} reads {edge}: {problem}",
                    hint=f"name a revision stage {edge.stage!r} publishes, or read its final result ({edge.stage})",
                )
