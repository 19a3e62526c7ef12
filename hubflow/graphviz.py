"""`hubflow graph`: the stage DAG as Mermaid or Graphviz dot text."""

from __future__ import annotations

from typing import Any


def _edges(project: Any) -> tuple[list[tuple[str, str, str]], dict[str, str]]:
    """(from, to, label) edges and external node id -> label."""
    edges: list[tuple[str, str, str]] = []
    externals: dict[str, str] = {}
    for name in project.graph.order:
        node = project.graph.nodes[name]
        for input_name, edge in node.stage_inputs.items():
            edges.append((edge.stage, name, input_name))
        for input_name, ref in node.external_inputs.items():
            ext = f"ext{len(externals)}"
            label = str(ref)
            for k, v in externals.items():
                if v == label:
                    ext = k
            externals[ext] = label
            edges.append((ext, name, input_name))
    return edges, externals


def _sweeps(project: Any) -> dict[str, list[str]]:
    """Sweep name -> its member stages (those in the graph)."""
    sweeps = getattr(project.manifest, "sweeps", {})
    return {n: [m for m in s.member_names if m in project.graph.nodes] for n, s in sweeps.items()}


def render(project: Any, fmt: str = "mermaid") -> str:
    edges, externals = _edges(project)
    stages = project.manifest.stages
    if fmt == "dot":
        lines = ["digraph hubflow {", "  rankdir=LR;"]
        for name in project.graph.order:
            outs = ", ".join(cfg for cfg in stages[name].output_texts().values())
            lines.append(f'  "{name}" [shape=box, label="{name}\\n({stages[name].kind})\\n{outs}"];')
        for i, (sweep, members) in enumerate(_sweeps(project).items()):
            lines.append(
                f'  subgraph cluster_{i} {{ label="sweep {sweep}"; {"; ".join(f"{chr(34)}{m}{chr(34)}" for m in members)}; }}'
            )
        for ext, label in externals.items():
            lines.append(f'  "{ext}" [shape=cylinder, label="{label}"];')
        lines += [f'  "{a}" -> "{b}" [label="{lbl}"];' for a, b, lbl in edges]
        lines.append("}")
        return "\n".join(lines)
    ids = {name: f"s{i}" for i, name in enumerate(project.graph.order)} | {e: e for e in externals}
    lines = ["flowchart LR"]
    grouped = _sweeps(project)
    in_sweep = {m for members in grouped.values() for m in members}
    for name in project.graph.order:
        if name not in in_sweep:
            lines.append(f'  {ids[name]}["{name} ({stages[name].kind})"]')
    for i, (sweep, members) in enumerate(grouped.items()):
        lines.append(f'  subgraph sweep{i}["sweep {sweep}"]')
        lines += [f'    {ids[m]}["{m} ({stages[m].kind})"]' for m in members]
        lines.append("  end")
    for ext, label in externals.items():
        lines.append(f'  {ext}[("{label}")]')
    lines += [f"  {ids[a]} -->|{lbl}| {ids[b]}" for a, b, lbl in edges]
    return "\n".join(lines)
