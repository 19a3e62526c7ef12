"""Leases: two `hubflow run` processes (on one machine or several) sharing a hub never run the same
stage (fingerprint) at once; the second waits for the first's result and reuses it.

A lease lives in the hub, so it works wherever the hub is reachable (a local store, or the ``hf``
backend, `hubflow serve` included). It is the branch ``hubflow-lease-<fingerprint[:24]>`` of the
stage's first output repo, pointing at a commit whose ``lease.json`` (and metadata) names its
owner: a random token, host, pid and the time of its last heartbeat. Only the hub's own atomic
operations are used:

- **claim**: the launcher commits its ``lease.json`` on a private branch (``hubflow-claim-<token>``),
  then creates the lease branch at that commit; creating a branch that exists fails
  (:class:`~hubflow.errors.RefExists`), so exactly one launcher wins. The private branch is deleted.
- **heartbeat**: every ``timeout / 10`` seconds the owner commits a new ``lease.json`` on the lease
  branch with ``parent_commit`` = its last one; a :class:`~hubflow.errors.CommitConflict` means it
  lost the lease (someone took it over), and it stops renewing.
- **stale takeover**: a lease is stale when its heartbeat is older than the timeout
  (``HUBFLOW_LEASE_TIMEOUT``, default :data:`hubflow.constants.LEASE_TIMEOUT_SECONDS` = 300 s) by the
  waiter's clock, when the waiter has seen its branch not move for that long (clocks that disagree
  cannot keep a dead lease alive), or at once when its owner ran on this host and that process is
  gone. A waiter takes a stale lease with a commit whose ``parent_commit`` is the stale head: of
  several waiters, one wins.
- **release**: after publishing, or when the stage failed, the owner deletes the lease branch (if it
  still points at its own last heartbeat).

A launcher that crashes leaves its lease behind: another launcher takes the stage over once the lease
is stale (at once on the same host). A launcher whose lease was taken over while it still ran (a
network partition longer than the timeout) finishes and publishes anyway; publishing resolves the race
by fingerprint (:func:`hubflow.plan.after_commit_conflict`), so the worst case is a stage computed
twice, never a mixed or lost result.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from hubflow import constants
from hubflow.errors import CommitConflict, HubError, RefExists, RevisionNotFound
from hubflow.hub.base import Hub
from hubflow.launch.process import Cancelled, is_running, start_time
from hubflow.refs import RepoRef

LEASE_PREFIX = "hubflow-lease-"
CLAIM_PREFIX = "hubflow-claim-"
LEASE_FILE = "lease.json"
HEARTBEATS_PER_TIMEOUT = 10
"""The owner renews its lease this many times per timeout."""


@dataclass(frozen=True)
class Owner:
    """Who holds a lease, as written in its ``lease.json``."""

    token: str
    host: str
    pid: int
    start: str | None
    stage: str
    fingerprint: str
    heartbeat: float
    """Unix time (the owner's clock) of the last renewal."""

    def describe(self) -> str:
        return f"{self.host} pid {self.pid}"


def this_owner(stage: str, fingerprint: str) -> Owner:
    """A fresh identity for one claim by this process (the token tells two claims apart)."""
    pid = os.getpid()
    return Owner(
        uuid.uuid4().hex, socket.gethostname(), pid, start_time(pid), stage, fingerprint, time.time()
    )


def lease_branch(fingerprint: str) -> str:
    return LEASE_PREFIX + fingerprint[:24]


def is_stale(
    owner: Owner,
    *,
    now: float,
    unchanged_for: float,
    timeout: float,
    host: str,
    alive: Callable[[int, str | None], bool],
) -> str | None:
    """Why the lease of ``owner`` is stale, or None while it is live (pure but for ``alive``).

    ``unchanged_for``: how long this waiter has seen the lease branch at the same commit."""
    if owner.host == host and not alive(owner.pid, owner.start):
        return f"its owner (pid {owner.pid} on this host) is gone"
    age = now - owner.heartbeat
    if age > timeout:
        return f"its last heartbeat is {age:.0f}s old (timeout {timeout:g}s)"
    if unchanged_for > timeout:
        return f"it has not moved for {unchanged_for:.0f}s (timeout {timeout:g}s)"
    return None


def read_lease(hub: Hub, repo: RepoRef, fingerprint: str) -> tuple[str, Owner] | None:
    """(head commit, owner) of the stage's lease, or None when nobody holds it."""
    branch = lease_branch(fingerprint)
    if not hub.repo_exists(repo):
        return None
    head = hub.list_refs(repo).branches.get(branch)
    if head is None:
        return None
    try:
        data = json.loads(hub.read_file(repo, LEASE_FILE, head))
        return head, Owner(**data)
    except (HubError, ValueError, TypeError):
        try:  # deleted (released) between the two reads
            head = hub.resolve(repo, branch)
        except RevisionNotFound:
            return None
        raise


def _lease_folder(owner: Owner) -> tempfile.TemporaryDirectory[str]:
    folder = tempfile.TemporaryDirectory(prefix="hubflow-lease-")
    Path(folder.name, LEASE_FILE).write_text(json.dumps(asdict(owner), sort_keys=True), encoding="utf-8")
    return folder


def _commit_lease(hub: Hub, repo: RepoRef, owner: Owner, branch: str, parent: str | None, what: str) -> str:
    with _lease_folder(owner) as folder:
        info = hub.commit_folder(
            repo,
            Path(folder),
            message=f"hubflow: lease of stage {owner.stage} ({what} by {owner.describe()})",
            metadata={constants.METADATA_KEY: {"lease": asdict(owner)}},
            branch=branch,
            parent_commit=parent,
        )
    return info.commit_id


class Lease:
    """A lease this process holds; :meth:`start` renews it in a thread until :meth:`release`."""

    def __init__(self, hub: Hub, repo: RepoRef, owner: Owner, head: str, timeout: float) -> None:
        self.hub, self.repo, self.owner, self.head = hub, repo, owner, head
        self.branch = lease_branch(owner.fingerprint)
        self.interval = max(0.2, timeout / HEARTBEATS_PER_TIMEOUT)
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mutex = threading.Lock()

    def renew(self) -> bool:
        """One heartbeat; False (and :attr:`lost`) when another launcher took the lease."""
        with self._mutex:
            if self.lost:
                return False
            owner = Owner(**{**asdict(self.owner), "heartbeat": time.time()})
            try:
                self.head = _commit_lease(self.hub, self.repo, owner, self.branch, self.head, "heartbeat")
            except CommitConflict:
                self.lost = True
                return False
            self.owner = owner
            return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self.owner.stage}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if not self.renew():
                    return
            except HubError:
                continue  # the hub is unreachable for now: the next beat tries again

    def release(self) -> None:
        """Stop renewing and delete the lease branch while it is still this owner's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._mutex:
            if self.lost:
                return
            self.lost = True
            try:
                if self.hub.list_refs(self.repo).branches.get(self.branch) == self.head:
                    self.hub.delete_branch(self.repo, self.branch)
            except RevisionNotFound:
                pass


def try_acquire(hub: Hub, repo: RepoRef, stage: str, fingerprint: str, timeout: float) -> Lease | None:
    """Claim the stage's lease: a :class:`Lease` when this call created it, None when another holds it."""
    hub.create_repo(repo, exist_ok=True)
    branch = lease_branch(fingerprint)
    refs = hub.list_refs(repo)
    if branch in refs.branches:
        return None
    owner = this_owner(stage, fingerprint)
    claim = CLAIM_PREFIX + owner.token[:20]
    base = refs.branches.get("main") or next(iter(sorted(refs.branches.values())), None)
    if base is not None:  # a Hub commits only to a branch that exists
        hub.create_branch(repo, claim, revision=base)
    try:
        head = _commit_lease(hub, repo, owner, claim, base, "claim")
        try:
            hub.create_branch(repo, branch, revision=head)
        except RefExists:
            return None
    finally:
        try:
            hub.delete_branch(repo, claim)
        except RevisionNotFound:
            pass
    return Lease(hub, repo, owner, head, timeout)


def take_over(
    hub: Hub, repo: RepoRef, stage: str, fingerprint: str, stale_head: str, timeout: float
) -> Lease | None:
    """Take a stale lease (its branch still at ``stale_head``); None when another launcher moved it first."""
    owner = this_owner(stage, fingerprint)
    try:
        head = _commit_lease(hub, repo, owner, lease_branch(fingerprint), stale_head, "takeover")
    except CommitConflict:
        return None
    return Lease(hub, repo, owner, head, timeout)


def claim(
    hub: Hub,
    repo: RepoRef,
    stage: str,
    fingerprint: str,
    *,
    published: Callable[[], dict[str, str] | None],
    echo: Callable[[str], None],
    timeout: float | None = None,
    poll: float | None = None,
    stop: threading.Event | None = None,
) -> tuple[Lease | None, dict[str, str] | None]:
    """Hold the stage's lease, or get the result another launcher published meanwhile.

    Returns ``(lease, None)`` when this launcher must run the stage (the lease is held, not yet
    renewing: call :meth:`Lease.start`), or ``(None, outputs)`` when ``published()`` found the
    result while waiting. Raises :class:`~hubflow.launch.process.Cancelled` when ``stop`` is set."""
    timeout = constants.env_lease_timeout() if timeout is None else timeout
    poll = max(0.05, min(5.0, timeout / HEARTBEATS_PER_TIMEOUT)) if poll is None else poll
    host = socket.gethostname()
    seen: tuple[str, float] | None = None  # (head, when this waiter first saw it)
    told: str | None = None
    while True:
        found = published()
        if found is not None:
            return None, found
        lease = try_acquire(hub, repo, stage, fingerprint, timeout)
        if lease is None:
            current = read_lease(hub, repo, fingerprint)
            if current is None:
                continue  # released meanwhile: look for its result, then claim again
            head, owner = current
            if seen is None or seen[0] != head:
                seen = (head, time.monotonic())
            why = is_stale(
                owner,
                now=time.time(),
                unchanged_for=time.monotonic() - seen[1],
                timeout=timeout,
                host=host,
                alive=is_running,
            )
            if why is not None:
                lease = take_over(hub, repo, stage, fingerprint, head, timeout)
                if lease is not None:
                    echo(f"took over the stale lease of {owner.describe()}: {why}")
        if lease is not None:
            found = published()  # its last owner may have published just before releasing
            if found is not None:
                lease.release()
                return None, found
            return lease, None
        if told != owner.token:
            echo(f"waiting: {owner.describe()} is running it (lease {lease_branch(fingerprint)} in {repo})")
            told = owner.token
        if stop is not None:
            if stop.wait(poll):
                raise Cancelled
        else:
            time.sleep(poll)
