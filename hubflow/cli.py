"""The `hubflow` command. Thin: parse arguments, call the engine, print.

A user error prints one message and exits 2; a failed stage exits 1.
Nothing here imports torch: stages import their libraries in their own process.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from hubflow import __version__, constants
from hubflow.errors import HubflowError


def _project(path: str):  # -> Project (imported lazily to keep --help instant)
    from hubflow.project import Project

    return Project.load(path)


def cmd_validate(args: argparse.Namespace) -> int:
    for path in args.manifests or [constants.DEFAULT_MANIFEST]:
        project = _project(path)
        for name in project.graph.order:
            project.static[name]  # also checks source files / modules the fingerprint needs
        print(f"{path}: ok ({len(project.graph.nodes)} stages)")
        for line in _sweep_lines(project):
            print(f"  {line}")
    return 0


def _sweep_lines(project) -> list[str]:
    from hubflow.matrix import describe

    return [describe(sweep) for sweep in project.manifest.sweeps.values()]


def _plan_table(plan: list, project) -> str:
    from hubflow.registry import get_kind

    width = max((len(p.name) for p in plan), default=4)
    kw = max((len(p.kind) for p in plan), default=4)
    lines = []
    for p in plan:
        lines.append(f"  {p.action:<4}  {p.name:<{width}}  {p.kind:<{kw}}  {'; '.join(p.reasons)}")
        cfg = project.manifest.stages[p.name]
        lines += [f"        {note}" for note in get_kind(cfg.kind).describe(cfg)]
    return "\n".join(lines)


def _plan_markdown(plan: list, manifest: str) -> str:
    runs = sum(p.action == "run" for p in plan)
    lines = [f"### hubflow plan: `{manifest}`", "", f"{runs} to run, {len(plan) - runs} up to date", ""]
    lines += ["| action | stage | kind | why |", "| --- | --- | --- | --- |"]
    lines += [f"| {p.action} | `{p.name}` | {p.kind} | {'; '.join(p.reasons)} |" for p in plan]
    return "\n".join(lines)


def cmd_plan(args: argparse.Namespace) -> int:
    project = _project(args.manifest)
    plan = project.plan(args.stages, force=args.force, downstream=args.downstream)
    if args.json:
        print(json.dumps({"stages": [p.to_json() for p in plan]}, indent=2))
    elif args.markdown:
        print(_plan_markdown(plan, args.manifest))
    else:
        runs = sum(p.action == "run" for p in plan)
        print(f"plan for {args.manifest}: {runs} to run, {len(plan) - runs} up to date")
        print(_plan_table(plan, project))
        for line in _sweep_lines(project):
            print(f"  {line}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from hubflow.runner import Runner

    project = _project(args.manifest)
    plan = project.plan(args.stages, force=args.force, downstream=args.downstream)
    runner = Runner(project, echo=lambda s: print(s, flush=True), stream_logs=not args.quiet)
    summary = runner.run(plan, keep_going=args.keep_going, wait=args.wait)
    if summary.failed:
        for err in summary.errors.values():  # each message once, here (not in the stage's stream)
            print(f"error: {err}", file=sys.stderr)
        for name, cause in summary.blocked.items():
            print(f"  not run: {name} (after the failure of {cause!r})", file=sys.stderr)
    return summary.exit_code


def cmd_accept(args: argparse.Namespace) -> int:
    from hubflow.accept import accept

    items = list(args.items)
    first = Path(items[0])
    manifest = constants.DEFAULT_MANIFEST
    if first.suffix in (".yaml", ".yml") or first.is_file():
        manifest = items.pop(0)
    accept(_project(manifest), items, reason=args.reason, echo=lambda s: print(s, flush=True))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    project = _project(args.manifest)
    plan = project.plan()
    lock = project.lock()
    settings = project.manifest.hub
    where = project.hub.endpoint if settings.backend == "hf" else project.manifest.hub_root()  # type: ignore[attr-defined]
    print(f"{args.manifest}: {len(plan)} stages, hub {where}")
    for p in plan:
        state = "" if p.action == "skip" else "stale: "
        print(f"  {p.name} ({p.kind}): {state}{'; '.join(p.reasons)}")
        entry = lock.stages.get(p.name)
        outs = p.outputs or (entry.outputs if entry else {})
        for out_name, ref in outs.items():
            print(f"      {out_name}: {ref}")
    return 0


def _hub_for(args: argparse.Namespace):
    from hubflow.hub import open_hub, open_local

    if getattr(args, "root", None):
        return open_local(Path(args.root))
    env = constants.env_hub_root()
    if env is not None and not Path(args.manifest).exists():
        return open_local(env)
    return open_hub(_project(args.manifest).manifest)


def cmd_pull(args: argparse.Namespace) -> int:
    from hubflow.refs import parse_ref

    hub = _hub_for(args)
    dest = Path(args.to)
    if args.lock:
        lock = _project(args.manifest).lock()
        if not lock.stages:
            raise HubflowError(f"{lock.path} has no entries", hint="run `hubflow run` first")
        for entry in lock.stages.values():
            for text in entry.outputs.values():
                ref = parse_ref(text)
                target = dest / f"{ref.repo_type}s" / ref.repo_id
                hub.snapshot(ref.repo, ref.revision or "main", target)
                print(f"{ref} -> {target}")
        return 0
    if not args.ref:
        raise HubflowError("pull needs a REF or --lock", hint="e.g. `hubflow pull model:demo/sft --to out/`")
    ref = parse_ref(args.ref)
    commit = hub.resolve(ref.repo, ref.revision or "main")
    hub.snapshot(ref.repo, commit, dest)
    print(f"{ref.repo}@{commit} -> {dest}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from hubflow.refs import parse_repo

    hub = _hub_for(args)
    repo = parse_repo(args.ref)
    folder = Path(args.folder)
    if not folder.is_dir():
        raise HubflowError(f"{folder} is not a folder", hint="pass the folder to publish")
    hub.create_repo(repo, exist_ok=True)
    parent = hub.list_refs(repo).branches.get("main")
    info = hub.commit_folder(
        repo, folder, message=args.message or f"hubflow import {folder.name}", parent_commit=parent
    )
    print(f"{repo}@{info.commit_id}")
    return 0


def _local_root(args: argparse.Namespace) -> Path:
    """The local store a command reads: --root, else HUBFLOW_HUB_ROOT, else the manifest's."""
    if getattr(args, "root", None):
        return Path(args.root)
    env = constants.env_hub_root()
    if env is not None:
        return env
    if Path(args.manifest).exists():
        return _project(args.manifest).manifest.hub_root()
    raise HubflowError(
        f"no local store: {args.manifest} does not exist and neither --root nor HUBFLOW_HUB_ROOT is set",
        hint="pass --root STORE (a local hub folder) or --manifest MANIFEST",
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from hubflow.serve import run_server

    root = _local_root(args)
    print(
        f"hubflow serve: {root} on http://{args.host}:{args.port} (HF_ENDPOINT=http://{args.host}:{args.port})"
    )
    run_server(
        root,
        host=args.host,
        port=args.port,
        token=constants.env_serve_token(),
        public_read=args.public_read,
        insecure_no_auth=args.insecure_no_auth,
    )
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from hubflow.hub import open_hf, open_local
    from hubflow.hub.push import push
    from hubflow.refs import RepoRef, parse_ref

    ref = parse_ref(args.ref)
    settings = _project(args.manifest).manifest.hub if Path(args.manifest).exists() else None
    endpoint = args.endpoint or (settings.endpoint if settings and settings.backend == "hf" else None)
    namespace = args.namespace or (settings.namespace if settings else None)
    private = settings.private if settings and args.private is None else args.private is not False
    dst = ref.repo
    if args.to:
        dst = RepoRef(ref.repo_type, args.to)
    elif namespace:
        dst = RepoRef(ref.repo_type, f"{namespace}/{ref.repo_id.split('/')[1]}")
    source, target = open_local(_local_root(args)), open_hf(endpoint, private=private)
    work = Path(args.work) if args.work else Path(".hubflow") / "work"
    mapping = push(
        source, target, ref.repo, dst, revision=ref.revision or "main", history=args.all, work=work
    )
    print(f"pushed {len(mapping)} commit(s) of {ref.repo} to {dst} on {target.endpoint}")
    return 0


def cmd_graph(args: argparse.Namespace) -> int:
    from hubflow.graphviz import render

    print(render(_project(args.manifest), args.format))
    return 0


def cmd_log(args: argparse.Namespace) -> int:
    from hubflow.refs import parse_ref

    hub = _hub_for(args)
    ref = parse_ref(args.ref)
    refs = hub.list_refs(ref.repo)
    by_commit: dict[str, list[str]] = {}
    for name, commit in refs.branches.items():
        by_commit.setdefault(commit, []).append(name)
    for name, commit in refs.tags.items():
        by_commit.setdefault(commit, []).append(
            f"tag:{name[:19]}" if name.startswith("fp-") else f"tag:{name}"
        )
    for c in hub.list_commits(ref.repo, ref.revision or "main"):
        labels = f" ({', '.join(by_commit[c.commit_id])})" if c.commit_id in by_commit else ""
        print(f"commit {c.commit_id}{labels}")
        print(f"  date: {c.created_at}")
        meta = c.metadata.get(constants.METADATA_KEY, {})
        if meta:
            fp = f", fingerprint {str(meta['fingerprint'])[:16]}" if meta.get("fingerprint") else ""
            print(f"  stage: {meta.get('stage')} ({meta.get('kind')}){fp}")
            for name, text in sorted(meta.get("inputs", {}).items()):
                print(f"  input {name}: {text}")
            acc = meta.get("accepted")
            if isinstance(acc, dict):
                print(
                    f"  accepted: result {str(meta.get('accepted_result'))[:8]} up to date under fingerprint "
                    f"{str(acc.get('to'))[:16]} (was {str(acc.get('from'))[:16]}), by {acc.get('by')} "
                    f"at {acc.get('at')}"
                )
                print(f"  what changed: {'; '.join(acc.get('changes') or [])}")
                print(f"  reason: {acc.get('reason') or '(none given)'}")
        print(f"  {c.message}")
        print()
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from hubflow.report import write_report

    project = _project(args.manifest)
    out = Path(args.out) if args.out else project.manifest.base_dir / "report" / project.manifest.path.stem
    path = write_report(project, out)
    print(f"report: {path} ({len(list(out.glob('*.png')))} plot(s))")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from hubflow.manifest import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def cmd_fsck(args: argparse.Namespace) -> int:
    from hubflow.hub.fsck import fsck

    root = Path(args.root) if args.root else _project(args.manifest).manifest.hub_root()
    report = fsck(root, repair=args.repair)
    print(report.summary())
    return 0 if report.ok else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hubflow",
        description="Declarative dataflow over Hugging Face Hub artifacts: run only the stale stages of a manifest.",
    )
    p.add_argument("--version", action="version", version=f"hubflow {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def manifest_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "manifest", nargs="?", default=constants.DEFAULT_MANIFEST, help="manifest (default hubflow.yaml)"
        )

    sp = sub.add_parser(
        "validate", help="validate manifests (schema, graph, sources) without touching the hub"
    )
    sp.add_argument("manifests", nargs="*", help="manifest files (default hubflow.yaml)")
    sp.set_defaults(func=cmd_validate)

    for name, func, helptext in (
        ("plan", cmd_plan, "show what `run` would do and why"),
        ("run", cmd_run, "run the stale stages and publish their outputs"),
    ):
        sp = sub.add_parser(name, help=helptext)
        manifest_arg(sp)
        sp.add_argument("stages", nargs="*", help="only these stages (and what they need)")
        sp.add_argument("--force", action="store_true", help="re-run the named stages (all without names)")
        sp.add_argument(
            "--downstream", action="store_true", help="also the stages that depend on the named ones"
        )
        sp.set_defaults(func=func)
        if name == "plan":
            fmt = sp.add_mutually_exclusive_group()
            fmt.add_argument("--json", action="store_true", help="machine-readable plan")
            fmt.add_argument("--markdown", action="store_true", help="a markdown table (CI job summaries)")
        else:
            sp.add_argument(
                "--keep-going", action="store_true", help="after a failure, run independent stages"
            )
            sp.add_argument(
                "--wait", action="store_true", help="wait for another run of this manifest to finish"
            )
            sp.add_argument(
                "--quiet", action="store_true", help="do not stream stage output (it is still logged)"
            )

    sp = sub.add_parser(
        "accept",
        help="declare a stage's result up to date after a result-neutral code change (no re-run)",
        description="Mark the published results of STAGEs up to date under their new fingerprint, "
        "after a change of code only (a library upgrade, a kind's VERSION, a refactored module) that "
        "you declare result-neutral: tags the same commits, records who, why and what differed in the "
        "lock and the card. A change of config or inputs is refused (run those).",
    )
    sp.add_argument(
        "items", nargs="+", metavar="[MANIFEST] STAGE", help="manifest (default hubflow.yaml), then stages"
    )
    sp.add_argument("--reason", help="why the change is result-neutral (recorded)")
    sp.set_defaults(func=cmd_accept)

    sp = sub.add_parser("status", help="each stage's state and published revisions")
    manifest_arg(sp)
    sp.set_defaults(func=cmd_status)

    sp = sub.add_parser("pull", help="copy a published revision (or everything in the lock) to a folder")
    sp.add_argument("ref", nargs="?", help="TYPE:NS/NAME[@REV]")
    sp.add_argument("--to", required=True, help="destination folder")
    sp.add_argument("--lock", action="store_true", help="pull every output recorded in the manifest's lock")
    sp.add_argument("--manifest", default=constants.DEFAULT_MANIFEST, help="manifest naming the hub")
    sp.add_argument("--root", help="a local store folder (instead of the manifest's hub)")
    sp.set_defaults(func=cmd_pull)

    sp = sub.add_parser("import", help="publish a local folder as a new commit of a repo (e.g. a base model)")
    sp.add_argument("folder")
    sp.add_argument("ref", help="TYPE:NS/NAME")
    sp.add_argument("-m", "--message", help="commit message")
    sp.add_argument("--manifest", default=constants.DEFAULT_MANIFEST, help="manifest naming the hub")
    sp.add_argument("--root", help="a local store folder (instead of the manifest's hub)")
    sp.set_defaults(func=cmd_import)

    sp = sub.add_parser(
        "serve", help="serve a local store over the Hugging Face Hub's HTTP API (HF_ENDPOINT=...)"
    )
    sp.add_argument("--root", help="the local store folder (default: the manifest's hub)")
    sp.add_argument("--manifest", default=constants.DEFAULT_MANIFEST, help="manifest naming the store")
    sp.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    sp.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    sp.add_argument("--public-read", action="store_true", help="let anyone read; writes still need the token")
    sp.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="serve without HUBFLOW_SERVE_TOKEN (loopback addresses only)",
    )
    sp.set_defaults(func=cmd_serve)

    sp = sub.add_parser("push", help="copy a local repo's revision (or --all its history) to a Hub repo")
    sp.add_argument("ref", help="TYPE:NS/NAME[@REV] in the local store")
    sp.add_argument("--to-hub", action="store_true", required=True, help="push to the hf backend")
    sp.add_argument(
        "--endpoint", help="Hub URL (default: the manifest's hub.endpoint, HF_ENDPOINT, huggingface.co)"
    )
    sp.add_argument("--to", help="target NS/NAME (default: the same name, under hub.namespace if set)")
    sp.add_argument("--namespace", help="target namespace (default: the manifest's hub.namespace)")
    sp.add_argument("--all", action="store_true", help="every commit of the history, oldest first")
    vis = sp.add_mutually_exclusive_group()
    vis.add_argument("--private", action="store_true", default=None, help="create the target repo private")
    vis.add_argument("--public", dest="private", action="store_false", help="create the target repo public")
    sp.add_argument(
        "--manifest", default=constants.DEFAULT_MANIFEST, help="manifest naming the store and hub"
    )
    sp.add_argument("--root", help="the local store folder (instead of the manifest's)")
    sp.add_argument("--work", help="scratch folder for snapshots (default .hubflow/work)")
    sp.set_defaults(func=cmd_push)

    sp = sub.add_parser("graph", help="print the stage graph")
    manifest_arg(sp)
    sp.add_argument("--format", choices=["mermaid", "dot"], default="mermaid")
    sp.set_defaults(func=cmd_graph)

    sp = sub.add_parser("log", help="a repo's commits with their stage and inputs")
    sp.add_argument("ref", help="TYPE:NS/NAME[@REV]")
    sp.add_argument("--manifest", default=constants.DEFAULT_MANIFEST, help="manifest naming the hub")
    sp.add_argument("--root", help="a local store folder (instead of the manifest's hub)")
    sp.set_defaults(func=cmd_log)

    sp = sub.add_parser(
        "report", help="a Markdown report with plots of what the stages published (nothing is re-run)"
    )
    manifest_arg(sp)
    sp.add_argument("--out", help="output folder (default report/NAME beside the manifest)")
    sp.set_defaults(func=cmd_report)

    sp = sub.add_parser("schema", help="print the manifest's JSON Schema (for editors)")
    sp.set_defaults(func=cmd_schema)

    sp = sub.add_parser("fsck", help="verify every stored file's hash and every ref")
    sp.add_argument("--manifest", default=constants.DEFAULT_MANIFEST, help="manifest naming the hub")
    sp.add_argument("--root", help="a local store folder")
    sp.add_argument("--repair", action="store_true", help="remove leftovers of interrupted commits")
    sp.set_defaults(func=cmd_fsck)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except HubflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        print(
            f"interrupted ({signal.Signals(signum).name}): the running stage was stopped and nothing of it "
            "was published; `hubflow run` again resumes from the finished stages",
            file=sys.stderr,
        )
        return 128 + signum


if __name__ == "__main__":
    sys.exit(main())
