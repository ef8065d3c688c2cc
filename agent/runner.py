"""The one place that runs external commands: absolute path, argv list, timeout, typed errors."""

import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Optional, Protocol

from agent.errors import CommandFailed

SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes


class Runner(Protocol):
    def __call__(
        self,
        argv: Sequence[str],
        *,
        timeout: float = ...,
        input: Optional[bytes] = ...,
        check: bool = ...,
        env: Optional[Mapping[str, str]] = ...,
    ) -> Completed: ...


def run(
    argv: Sequence[str],
    *,
    timeout: float = 30.0,
    input: Optional[bytes] = None,
    check: bool = True,
    env: Optional[Mapping[str, str]] = None,
) -> Completed:
    """Run argv (argv[0] must be absolute) with a clean environment; never through a shell."""
    args = tuple(argv)
    if not args or not os.path.isabs(args[0]):
        raise CommandFailed(f"refusing to run a command without an absolute path: {args!r}")
    base = {"PATH": SAFE_PATH, "LC_ALL": "C"}
    if env:
        base.update(env)
    try:
        proc = subprocess.run(
            args,
            input=input,
            capture_output=True,
            timeout=timeout,
            env=base,
            close_fds=True,
            check=False,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
    except FileNotFoundError as exc:
        raise CommandFailed(f"{args[0]}: not installed", hint="install it or fix the path") from exc
    except subprocess.TimeoutExpired as exc:
        raise CommandFailed(f"{args[0]}: timed out after {timeout:g}s") from exc
    except OSError as exc:
        raise CommandFailed(f"{args[0]}: cannot run: {exc.strerror}") from exc
    done = Completed(args, proc.returncode, proc.stdout, proc.stderr)
    if check and proc.returncode != 0:
        detail = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise CommandFailed(
            f"{args[0]} exited {proc.returncode}" + (f": {detail[-1]}" if detail else "")
        )
    return done


def which(name: str, dirs: Sequence[str] = SAFE_PATH.split(":")) -> Optional[str]:
    """Find an executable in the fixed system directories (never the caller's PATH)."""
    for d in dirs:
        path = os.path.join(d, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None
