"""Multi-node training: how many machines a stage spans, and where global rank 0 listens.

A stage's machines come from ``resources.num_machines`` / ``main_process_port`` and, where it names
one, its accelerate config file (``num_machines``, ``main_process_ip``, ``main_process_port``). They
must agree: :func:`check_machines` runs when the manifest loads (``hubflow validate`` / ``plan``, no
torch) and fails with a fix; :func:`machines_of` is what the launchers use. ``machine_rank`` in a
config file is ignored: hubflow starts every rank and gives each its own.

- ``launcher: local``: every machine rank runs on this host, rank 0 on 127.0.0.1;
- ``launcher: ray``: multi-node is refused for now (designed: one Ray task per machine, rank 0's node
  IP the main process address, so a config's ``main_process_ip`` is refused there already).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubflow.errors import ManifestError
from hubflow.stage import Resources

LOOPBACK = "127.0.0.1"
LOOPBACK_NAMES = ("localhost", "::1")


class ResourcesError(ManifestError):
    """A stage's ``resources`` disagree with themselves or with its accelerate config file."""


@dataclass(frozen=True)
class Machines:
    """The machines of one stage: how many, and global rank 0's address (None: chosen at launch)."""

    num_machines: int
    main_process_ip: str | None = None
    main_process_port: int | None = None


@dataclass(frozen=True)
class Rank:
    """One machine rank of a multi-node launch: ``accelerate launch --machine_rank ...``."""

    machine_rank: int
    num_machines: int
    main_process_ip: str
    main_process_port: int


def read_accelerate_config(resources: Resources, base_dir: Path) -> dict[str, Any]:
    """The stage's accelerate config file as a mapping ({} without one). YAML or JSON."""
    if not resources.accelerate_config:
        return {}
    from hubflow.yamlload import load_file

    path = (base_dir / resources.accelerate_config).resolve()
    try:
        data = load_file(path, "accelerate config")
    except OSError as exc:
        raise ResourcesError(
            f"resources.accelerate_config: cannot read {path}: {exc.strerror or exc}",
            hint="write the file (`accelerate config --config_file PATH`), or fix the path (relative to the "
            "manifest)",
        ) from None
    if not isinstance(data, dict):
        raise ResourcesError(
            f"resources.accelerate_config: {path} is not a mapping",
            hint="an accelerate config is a YAML (or JSON) mapping, as `accelerate config` writes it",
        )
    return data


def machines_of(resources: Resources, base_dir: Path, where: str = "stage") -> Machines:
    """The stage's machines, resources and accelerate config combined; ResourcesError on a conflict."""
    config = read_accelerate_config(resources, base_dir)
    source = f"the accelerate config {resources.accelerate_config}"
    set_here = resources.model_fields_set
    num = resources.num_machines
    in_config = config.get("num_machines")
    if in_config is not None:
        if not isinstance(in_config, int) or isinstance(in_config, bool) or in_config < 1:
            raise ResourcesError(
                f"{where}: {source} has num_machines: {in_config!r}",
                hint="set num_machines in the accelerate config to a whole number >= 1",
            )
        if "num_machines" in set_here and in_config != num:
            raise ResourcesError(
                f"{where}: resources.num_machines is {num} but {source} has num_machines: {in_config}",
                hint=f"set both to the same number, or drop resources.num_machines (the config's {in_config} "
                "is then used)",
            )
        num = in_config
    port = resources.main_process_port
    config_port = config.get("main_process_port")
    if config_port is not None and num > 1:
        if port is not None and port != config_port:
            raise ResourcesError(
                f"{where}: resources.main_process_port is {port} but {source} has main_process_port: "
                f"{config_port}",
                hint="set one of them, or both to the same port",
            )
        port = int(config_port)
    ip = config.get("main_process_ip") if num > 1 else None
    if ip is not None:
        ip = str(ip)
        if resources.launcher == "ray":
            raise ResourcesError(
                f"{where}: {source} sets main_process_ip: {ip}, but with `launcher: ray` rank 0's node is "
                "picked by Ray and its IP is the main process address",
                hint="remove main_process_ip from the accelerate config (or use `launcher: local` on a "
                "single host)",
            )
        if not _is_loopback(ip):
            raise ResourcesError(
                f"{where}: {source} sets main_process_ip: {ip}, but `launcher: local` runs every machine rank "
                "on this host (over 127.0.0.1)",
                hint="run `accelerate launch` on each machine outside hubflow to use several machines; remove "
                "main_process_ip for a single-host run",
            )
    return Machines(num, ip, port)


def check_machines(resources: Resources, base_dir: Path, where: str) -> Resources:
    """Check the stage's machines when the manifest loads; the resources with the machine count the
    accelerate config implies (so the plan, the fingerprint and the launchers see one number)."""
    machines = machines_of(resources, base_dir, where)
    if machines.num_machines > 1 and resources.launcher == "ray":
        raise ResourcesError(
            f"{where}: {machines.num_machines} machines with `launcher: ray`: hubflow does not launch "
            "multi-node stages on Ray yet (one task per machine rank in a placement group is designed, "
            "not built)",
            hint="use `launcher: local` (every machine rank on this host), or run `accelerate launch` on each "
            "machine outside hubflow (or through Slurm: docs/scale-out.md)",
        )
    if machines.num_machines != resources.num_machines:
        resources = resources.model_copy(update={"num_machines": machines.num_machines})
    return resources


def _is_loopback(ip: str) -> bool:
    return ip in LOOPBACK_NAMES or ip.startswith("127.")


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nothing listens on now (the OS's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def local_ranks(machines: Machines) -> list[Rank]:
    """``launcher: local``: every machine rank on this host, rank 0 on 127.0.0.1."""
    ip = LOOPBACK if machines.main_process_ip in (None, "localhost") else str(machines.main_process_ip)
    port = machines.main_process_port or free_port(ip if ip != "::1" else LOOPBACK)
    return [Rank(i, machines.num_machines, ip, port) for i in range(machines.num_machines)]
