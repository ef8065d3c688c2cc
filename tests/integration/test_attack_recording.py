"""Attacks on session recording, replayed for real: a session user who tries to keep the
supervisor from ending the session once the shell has gone, or to get output to the client that
the recording does not hold (past its limit, or while the disk fills)."""

from __future__ import annotations

import os
import pwd
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from tests.conftest import Users
from tests.integration.test_recording import _asciinema, _output, _start, recording

pytestmark = pytest.mark.privileged


def _kill_all(user: str) -> None:
    """Every process of USER, gone."""
    uid = str(pwd.getpwnam(user).pw_uid)
    subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                    "kill", "-9", "-1"], check=False, capture_output=True)


@pytest.fixture
def alice_cleanup(users: Users) -> Iterator[Users]:
    try:
        yield users
    finally:
        _kill_all(users.alice)


def _sink(fd: int, stop: threading.Event) -> threading.Thread:
    """A client that reads FD as fast as it can (and throws the bytes away)."""

    def run() -> None:
        while not stop.is_set():
            try:
                if not os.read(fd, 1 << 20):
                    return
            except OSError:
                return

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


# A process of the session that leaves its process group, ignores the hang-up and floods the
# session's output for ever after the shell has exited.
FLOOD = "setsid sh -c 'trap \"\" HUP; exec yes flood' </dev/null 2>/dev/null & sleep 0.5; exit 3"


def test_flood_after_exit_does_not_wedge_the_end(alice_cleanup: Users) -> None:
    """The end's drain is bounded even when the client takes everything at once: the session
    ends, its end is recorded with the recording's hash, and the client is told."""
    users = alice_cleanup
    with recording(max_bytes=0) as (d, _):
        sess = _start(d, users, "flood-exit", FLOOD)
        stop = threading.Event()
        readers = [_sink(sess.stdout, stop), _sink(sess.stderr, stop)]
        try:
            t0 = time.monotonic()
            ended = d.wait_event("flood-exit", "session.ended", timeout=40)
            assert time.monotonic() - t0 < 40
            assert ended["exit_status"]["code"] == 3
            assert ended["recording"]["file"] == "flood-exit.cast"
        finally:
            _kill_all(users.alice)
            stop.set()
            for t in readers:
                t.join(5)
        status = sess.wait()
        assert status["code"] == 3
        sess.close()


def test_flood_after_exit_on_a_terminal(alice_cleanup: Users) -> None:
    """The same on a PTY: a process outside the group keeps writing to the terminal."""
    users = alice_cleanup
    with recording(max_bytes=0) as (d, _):
        sess = _start(d, users, "flood-tty", None, tty=True)
        assert sess.master is not None
        stop = threading.Event()
        reader = _sink(sess.master, stop)
        try:
            os.write(sess.master, (
                b"T=$(tty); setsid sh -c \"trap '' HUP; exec yes flood > $T\" </dev/null "
                b"2>/dev/null & sleep 0.5; exit 3\n"))
            ended = d.wait_event("flood-tty", "session.ended", timeout=40)
            assert ended["recording"]["file"] == "flood-tty.cast"
        finally:
            _kill_all(users.alice)
            stop.set()
            reader.join(5)
        sess.close()


def _read_fast(fd: int, timeout: float = 60) -> bytes:
    out = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return bytes(out)
        out += chunk
    raise AssertionError("no end of output")


def test_output_past_the_limit_is_not_delivered(alice_cleanup: Users) -> None:
    """With on_limit `end`, what reaches the client is in the recording: the session's output
    past recording.max_bytes is not handed over unrecorded while the session ends."""
    users = alice_cleanup
    with recording(max_bytes=1 << 20, on_limit="end") as (d, rec_dir):
        sess = _start(d, users, "limit-leak", "head -c 30000000 /dev/zero | tr '\\0' a")
        got = _read_fast(sess.stdout)
        sess.wait()
        sess.close()
        ended = d.wait_event("limit-leak", "session.ended")
        assert ended["reason"] == "recording_limit"
        _, events = _asciinema(os.path.join(rec_dir, "limit-leak.cast"))
        recorded = _output(events).encode()
        assert events[-2][2] == "recording stopped reason=max_bytes"
        assert got  # what was recorded was shown
        assert recorded.startswith(got), (len(got), len(recorded))


def test_output_is_not_shown_before_it_is_written(alice_cleanup: Users) -> None:
    """With on_failure `end`, output reaches the client only once it is in the file: a disk that
    fills mid-session (the session user can fill a shared file system) does not let buffered,
    never-written output through before the session ends."""
    from tests.integration.test_recording import _fill, _read_until, _small_fs

    users = alice_cleanup
    with _small_fs("128k") as path, recording(dir=path, on_failure="end") as (d, _):
        # less than the recorder's buffer, then nothing: written (or not) at the next flush
        cmd = "echo start; sleep 2; head -c 30000 /dev/zero | tr '\\0' b; sleep 60"
        sess = _start(d, users, "fills-gap", cmd)
        got = _read_until(sess.stdout, b"start\n")
        time.sleep(0.6)  # "start" is in the file: now the disk fills
        _fill(path)
        got += _read_fast(sess.stdout)
        status = sess.wait()
        sess.close()
        assert status["reason"] == "recording_failed"
        _, events = _asciinema(os.path.join(path, "fills-gap.cast"))
        recorded = _output(events).encode()
        assert got.startswith(b"start\n")
        assert recorded.startswith(got), (len(got), len(recorded))


def test_supervisor_sigkill_leaves_a_valid_unverified_recording(alice_cleanup: Users) -> None:
    """A supervisor killed outright: the client's descriptors end (nothing reaches it past the
    relay), the shell is left without its terminal, and the recording on disk is a valid prefix
    that `recordings verify` names as without an end on record."""
    import json
    import signal

    from tests.integration.test_recording import _cli, _read_until

    users = alice_cleanup
    with recording() as (d, rec_dir):
        sess = _start(d, users, "sup-kill", None, tty=True)
        assert sess.master is not None
        os.write(sess.master, b"echo mark-$((6*7))\n")
        assert b"mark-42" in _read_until(sess.master, b"mark-42")
        time.sleep(0.6)  # flushed
        sup = next(s["pid"] for s in d.client.sessions() if s["id"] == "sup-kill")
        os.kill(sup, signal.SIGKILL)
        assert _read_fast(sess.master, timeout=15) is not None  # end of file, not a hang
        _, events = _asciinema(os.path.join(rec_dir, "sup-kill.cast"))
        assert "mark-42" in _output(events)
        proc = _cli(d, "recordings", "verify", "sup-kill", "--json")
        assert proc.returncode == 0, proc.stderr
        assert [e["verified"] for e in json.loads(proc.stdout)] == ["unverified"]
        sess.close()
