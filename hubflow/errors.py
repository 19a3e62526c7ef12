"""The one error tree of hubflow.

Every error a user can cause derives from :class:`HubflowError` and carries a
message that says what failed and, where there is one, how to fix it
(``hint``). The CLI prints ``str(err)`` and exits with ``err.exit_code``: 2 for
user errors (bad manifest, bad ref, missing repo; also one a stage finds in its inputs),
1 for a failed stage.
"""

from __future__ import annotations


class HubflowError(Exception):
    """Root of every error hubflow raises on purpose."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(self.__str__())

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  fix: {self.hint}"
        return self.message


# --- manifest and graph -----------------------------------------------------


class ManifestError(HubflowError):
    """The manifest cannot be read or does not validate."""


class RefError(HubflowError):
    """A repo reference is malformed."""


class GraphError(ManifestError):
    """The stages do not form a valid DAG (cycle, dangling input, shared output)."""


class UnknownStageKind(ManifestError):
    """A stage names a kind no installed module provides."""


# --- hub ---------------------------------------------------------------------


class HubError(HubflowError):
    """A hub operation failed."""


class RepoNotFound(HubError):
    """The repository does not exist."""


class RevisionNotFound(HubError):
    """A branch, tag or commit does not resolve in the repository."""


class EntryNotFound(HubError):
    """A file is not in the given revision."""


class CommitConflict(HubError):
    """The branch moved since the expected parent commit was read."""


class CorruptObject(HubError):
    """A stored file does not match its recorded hash."""


class HubLockTimeout(HubError):
    """A lock in the store could not be acquired in time."""


# --- running -----------------------------------------------------------------


class RunLocked(HubflowError):
    """Another `hubflow run` holds this manifest."""


class NotAcceptable(HubflowError):
    """`hubflow accept` refused: the stage has no published result, or what differs is not code."""


class StageFailed(HubflowError):
    """A stage's process failed; nothing of it was published."""

    exit_code = 1


class StageUserError(HubflowError):
    """A stage stopped on a user error it found itself (a :class:`StageInputError`: a missing
    column, a mismatched tokenizer...). Nothing was published; like every user error, exit 2."""


class StageInputError(HubflowError):
    """A stage's inputs do not fit it (missing column, mismatched tokenizer...).

    Raised by stages before any compute; the runner reports it as a user error.
    """
