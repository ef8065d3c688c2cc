"""Resource limits, umask and nice value: capture, the changes between two captures, apply."""

from __future__ import annotations

import os
import resource

from agent import proclimits
from agent.proclimits import ProcessLimits

INF = resource.RLIM_INFINITY


def test_changes_keep_only_what_differs() -> None:
    before = ProcessLimits(((1, INF, INF), (7, 1024, 4096)), 0o022, 0)
    after = ProcessLimits(((1, 8192, 8192), (7, 1024, 4096)), 0o077, 0)
    diff = proclimits.changes(before, after)
    assert diff == ProcessLimits(((1, 8192, 8192),), 0o077, None)
    assert not diff.empty
    assert proclimits.changes(after, before) == ProcessLimits(((1, INF, INF),), 0o022, None)
    assert proclimits.changes(before, before).empty


def test_capture_has_every_resource_and_the_umask_and_nice() -> None:
    got = proclimits.capture()
    numbers = [r for r, _, _ in got.rlimits]
    assert numbers == list(proclimits.resources())
    assert resource.RLIMIT_FSIZE in numbers
    assert resource.RLIMIT_NOFILE in numbers
    assert 10 in numbers  # RLIMIT_LOCKS, which has no name in the resource module
    assert got.umask == os.umask(got.umask or 0)
    assert got.nice == os.getpriority(os.PRIO_PROCESS, 0)


def test_apply_and_restore_in_a_child() -> None:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            own = proclimits.capture()
            _soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
            # (no nice value: lowering it back would need root)
            proclimits.apply(ProcessLimits(((resource.RLIMIT_FSIZE, 8192, hard),), 0o077))
            mid = proclimits.capture()
            problems = proclimits.restore(own)
            ok = (dict((x, (s, h)) for x, s, h in mid.rlimits)[resource.RLIMIT_FSIZE]
                  == (8192, hard) and mid.umask == 0o077
                  and problems == () and proclimits.capture() == own)
            os.write(w, b"ok" if ok else repr((mid, problems)).encode())
        finally:
            os._exit(0)
    os.close(w)
    out = os.read(r, 4096)
    os.close(r)
    os.waitpid(pid, 0)
    assert out == b"ok"
