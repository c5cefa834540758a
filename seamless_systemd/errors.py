"""The exceptions library code raises. Only the CLI turns them into exit codes."""

from __future__ import annotations


class SeamlessError(Exception):
    """Base class: a failure with a message a sysadmin can act on."""

    exit_code = 1


class ConfigError(SeamlessError):
    """The configuration is invalid (names the file and the key)."""

    exit_code = 2


class PreflightError(SeamlessError):
    """The upgrade would fail; nothing was changed."""

    exit_code = 3

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("refusing to upgrade:\n" + "\n".join(f"  - {p}" for p in problems))


class CommandError(SeamlessError):
    """An external command failed."""

    def __init__(self, argv: list[str], returncode: int, stdout: str, stderr: str) -> None:
        self.argv = argv
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        tail = (stderr or stdout).strip().splitlines()[-5:]
        detail = ("\n    " + "\n    ".join(tail)) if tail else ""
        super().__init__(f"{argv[0]} exited with status {returncode}: {' '.join(argv)}{detail}")


class CheckpointError(SeamlessError):
    """A unit could not be checkpointed."""


class RestoreError(SeamlessError):
    """A unit could not be restored."""


class LockedError(SeamlessError):
    """Another upgrade holds the lock."""
