"""A loaded manifest with its graph, its hub and its lock: the I/O around the pure planner."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from hubflow.errors import HubflowError, RefError, RepoNotFound, RevisionNotFound
from hubflow.fingerprint import static_components
from hubflow.graph import Graph, graph_from_manifest
from hubflow.hub import open_hub
from hubflow.hub.base import Hub
from hubflow.lock import Lock, LockEntry
from hubflow.manifest import Manifest, load_manifest
from hubflow.plan import StagePlan, make_plan
from hubflow.refs import Ref, RepoRef, parse_ref
from hubflow.registry import get_kind


class _RepoTags(Mapping[str, str]):
    """A repo's tags as a read-only mapping that resolves one tag at a time."""

    def __init__(self, hub: Hub, repo: RepoRef) -> None:
        self.hub, self.repo = hub, repo

    def __getitem__(self, tag: str) -> str:
        try:
            return self.hub.resolve(self.repo, tag)
        except (RepoNotFound, RevisionNotFound):
            raise KeyError(tag) from None

    def _all(self) -> dict[str, str]:
        return self.hub.list_refs(self.repo).tags if self.hub.repo_exists(self.repo) else {}

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


@dataclass
class Project:
    manifest: Manifest
    graph: Graph
    _hub: Hub | None = field(default=None, repr=False)

    @classmethod
    def load(cls, path: str | Path) -> Project:
        manifest = load_manifest(path)
        return cls(manifest=manifest, graph=graph_from_manifest(manifest))

    @property
    def hub(self) -> Hub:
        if self._hub is None:
            self._hub = open_hub(self.manifest)
        return self._hub

    @cached_property
    def static(self) -> dict[str, dict[str, Any]]:
        """Stage -> the fingerprint parts known before inputs are resolved."""
        out: dict[str, dict[str, Any]] = {}
        for name, cfg in self.manifest.stages.items():
            kind = get_kind(cfg.kind)
            try:
                extra = kind.fingerprint_extra(cfg, self.manifest.base_dir)
            except HubflowError as exc:
                raise type(exc)(f"stage {name!r}: {exc.message}", exc.hint) from None
            out[name] = static_components(
                kind=cfg.kind,
                version=kind.version,
                settings=cfg.settings(),
                libraries=kind.libraries,
                extra=extra,
            )
        return out

    def lock(self) -> Lock:
        """This manifest's lock; until it exists, this manifest's entries of a shared ``hubflow.lock``."""
        return Lock.read(self.manifest.lock_path, legacy=self.manifest.legacy_lock_path, accept=self._owns)

    def _owns(self, name: str, entry: LockEntry) -> bool:
        """Whether a shared lock's entry is this manifest's: same stage name, kind and output repos."""
        cfg = self.manifest.stages.get(name)
        if cfg is None or cfg.kind != entry.kind:
            return False
        try:
            repos = {out: str(parse_ref(text).repo) for out, text in entry.outputs.items()}
        except RefError:
            return False
        return repos == {out: str(repo) for out, repo in cfg.output_repos().items()}

    def resolve_external(self) -> dict[str, dict[str, str]]:
        """Stage -> input -> TYPE:NS/NAME@COMMIT for every external input (branches resolved once)."""
        out: dict[str, dict[str, str]] = {}
        cache: dict[Ref, str] = {}
        for name, node in self.graph.nodes.items():
            for input_name, ref in node.external_inputs.items():
                if ref not in cache:
                    cache[ref] = self._resolve(name, input_name, ref)
                out.setdefault(name, {})[input_name] = f"{ref.repo}@{cache[ref]}"
        return out

    def _resolve(self, stage: str, input_name: str, ref: Ref) -> str:
        try:
            return self.hub.resolve(ref.repo, ref.revision or "main")
        except RepoNotFound as exc:
            raise RefError(
                f"stage {stage!r}, input {input_name!r}: {ref.repo} does not exist in the hub",
                hint=f"add a stage that writes it, or import a local folder with `hubflow import FOLDER {ref.repo}`",
            ) from exc
        except RevisionNotFound as exc:
            raise RefError(f"stage {stage!r}, input {input_name!r}: {exc.message}", exc.hint) from exc

    def output_tags(self) -> dict[RepoRef, Mapping[str, str]]:
        """Output repo -> tag -> commit, read lazily: the planner asks for one
        fingerprint tag per output, so only those are looked up."""
        return {
            repo: _RepoTags(self.hub, repo)
            for node in self.graph.nodes.values()
            for repo in node.outputs.values()
        }

    def expand_targets(self, names: list[str] | None) -> list[str] | None:
        """Stage names as a user gives them: a sweep's name stands for all its members."""
        if names is None:
            return None
        sweeps = self.manifest.sweeps
        return [m for n in names for m in (sweeps[n].member_names if n in sweeps else [n])]

    def plan(
        self, targets: list[str] | None = None, *, force: bool = False, downstream: bool = False
    ) -> list[StagePlan]:
        targets = self.expand_targets(targets)
        unknown = [t for t in targets or [] if t not in self.graph.nodes]
        if unknown:
            raise HubflowError(
                f"no stage named {', '.join(map(repr, unknown))} in {self.manifest.path}",
                hint=f"stages are: {', '.join(self.graph.order)}",
            )
        return make_plan(
            self.graph,
            static=self.static,
            kinds={n: c.kind for n, c in self.manifest.stages.items()},
            external=self.resolve_external(),
            tags=self.output_tags(),
            lock=self.lock().stages,
            targets=set(targets) if targets else None,
            force=force,
            downstream=downstream,
        )
