"""The one way this package runs external programs."""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Mapping, Sequence

from seamless_systemd.errors import CommandError
from seamless_systemd.log import log


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    inherit_stdout: bool = False,
    pass_fds: Sequence[int] = (),
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ARGV (no shell, stdin closed or INPUT); raise CommandError on failure.

    Output is captured as text unless INHERIT_STDOUT, in which case the
    child's stdout/stderr are ours (used when the child must write to the
    unit's journal stream, e.g. criu restore). PASS_FDS stay open in the child.
    """
    args = [str(a) for a in argv]
    log.debug("+ %s", shlex.join(args))
    try:
        proc = subprocess.run(
            args,
            stdin=subprocess.DEVNULL if input is None else None,
            input=input,
            capture_output=not inherit_stdout,
            text=True,
            env=None if env is None else dict(env),
            timeout=timeout,
            check=False,
            pass_fds=tuple(pass_fds),
        )
    except FileNotFoundError as e:
        raise CommandError(args, 127, "", f"{args[0]}: command not found") from e
    except subprocess.TimeoutExpired as e:
        raise CommandError(args, -1, "", f"timed out after {timeout} s") from e
    if check and proc.returncode != 0:
        raise CommandError(args, proc.returncode, proc.stdout or "", proc.stderr or "")
    return proc
