"""Session recording end to end: real daemon, real accounts and shells; every recording is judged
by asciinema's own reader and by its hash in the audit log."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import select
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any, Optional

import pytest

from agent import asciicast
from tests.conftest import Users
from tests.support.daemon import DaemonProc, running

pytestmark = pytest.mark.privileged

TAG = "SSMSessionRunAs"


def _rec_dir() -> str:
    base = tempfile.mkdtemp(prefix="runas-agent-rec-", dir="/run")
    os.chmod(base, 0o755)  # only the recording directory itself keeps others out
    return os.path.join(base, "casts")


@contextlib.contextmanager
def recording(**rec: Any) -> Iterator[tuple[DaemonProc, str]]:
    path = rec.pop("dir", None) or _rec_dir()
    with running({"recording": {"enabled": True, "dir": path, **rec}}) as d:
        yield d, path


def _start(d: DaemonProc, users: Users, sid: str, command: Optional[str], *,
           tty: bool = False) -> Any:
    return d.client.start(session_id=sid, principal_arn="arn:aws:iam::1:role/Rec",
                          tags={TAG: users.alice}, run_as_enabled=True, command=command,
                          terminal=("xterm-256color", 24, 80) if tty else None)


def _read_until(fd: int, want: bytes, timeout: float = 15) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while want not in out and time.monotonic() < deadline:
        if not select.select([fd], [], [], 0.1)[0]:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        out += chunk
    return out


def _read_all(fd: int, timeout: float = 30) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        chunk = os.read(fd, 65536)
        if not chunk:
            return out
        out += chunk
    raise AssertionError("no end of output")


def _asciinema(path: str) -> tuple[dict[str, Any], list[list[Any]]]:
    """The recording as asciinema's reader sees it (it raises on anything invalid)."""
    from asciinema import asciicast as reader

    with reader.open_from_url(path) as cast:
        return cast.v2_header, list(cast.events())


def _asciinema_cat(path: str) -> bytes:
    proc = subprocess.run([sys.executable, "-m", "asciinema", "cat", path], capture_output=True,
                          stdin=subprocess.DEVNULL, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _file_digest(path: str) -> tuple[int, str]:
    with open(path, "rb") as fh:
        data = fh.read()
    return len(data), hashlib.sha256(data).hexdigest()


def _check_ended(d: DaemonProc, sid: str, rec_dir: str) -> dict[str, Any]:
    """session.ended names the recording with its size and hash, and they match the file."""
    ended = d.wait_event(sid, "session.ended")
    rec = ended["recording"]
    assert rec["file"] == f"{sid}.cast"
    assert _file_digest(os.path.join(rec_dir, rec["file"])) == (rec["bytes"], rec["sha256"])
    return ended


def _output(events: list[list[Any]]) -> str:
    return "".join(e[2] for e in events if e[1] == "o")


def test_interactive_session(users: Users) -> None:
    with recording() as (d, rec_dir):
        sess = _start(d, users, "rec-tty", None, tty=True)
        assert sess.master is not None
        assert stat.S_ISSOCK(os.fstat(sess.master).st_mode)  # the relay, not the PTY master
        os.write(sess.master, b"stty -echoctl; echo mark-$((6*7))\n")
        assert b"mark-42" in _read_until(sess.master, b"mark-42")
        sess.resize(30, 100)
        os.write(sess.master, b"stty size; exit 7\n")
        out = _read_all(sess.master)
        assert b"30 100" in out
        status = sess.wait()
        sess.close()
        assert status["code"] == 7
        path = os.path.join(rec_dir, "rec-tty.cast")
        head, events = _asciinema(path)
        assert (head["width"], head["height"]) == (80, 24)
        assert head["env"]["TERM"] == "xterm-256color"
        assert head["env"]["SHELL"] == "/bin/bash"
        assert head["session"]["id"] == "rec-tty"
        assert head["session"]["user"] == users.alice
        assert head["session"]["principal"] == "arn:aws:iam::1:role/Rec"
        text = _output(events)
        assert "echo mark-$((6*7))" in text  # the typed input, echoed by the terminal
        assert "mark-42" in text
        assert "30 100" in text
        assert [e[2] for e in events if e[1] == "r"] == ["100x30"]
        assert not [e for e in events if e[1] == "i"]  # input is not recorded by default
        assert events[-1][1] == "m"
        assert asciicast.parse_end(events[-1][2]) == {"reason": "exited", "code": "7"}
        ended = _check_ended(d, "rec-tty", rec_dir)
        assert ended["recording"]["complete"] is True
        st = os.stat(path)
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600)
        st = os.stat(rec_dir)
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o700)


def test_input_is_recorded_when_asked(users: Users) -> None:
    with recording(input=True) as (d, rec_dir):
        sess = _start(d, users, "rec-input", None, tty=True)
        os.write(sess.master, b"echo typed-$((1+1)); exit\n")
        out = _read_all(sess.master)
        assert b"typed-2" in out
        sess.wait()
        sess.close()
        _, events = _asciinema(os.path.join(rec_dir, "rec-input.cast"))
        assert "echo typed-$((1+1)); exit\n" in "".join(e[2] for e in events if e[1] == "i")
        _check_ended(d, "rec-input", rec_dir)


def test_command_session_stdout_and_stderr(users: Users) -> None:
    with recording() as (d, rec_dir):
        proc = d.cli("session", "--session-id", "rec-cmd", "--run-as", "--tag",
                     f"{TAG}={users.alice}", "--", "sh", "-c",
                     "echo out1; sleep 0.2; echo err1 >&2; sleep 0.2; echo out2; exit 3")
        assert proc.returncode == 3, proc.stderr
        assert proc.stdout == b"out1\nout2\n"
        assert b"err1\n" in proc.stderr
        path = os.path.join(rec_dir, "rec-cmd.cast")
        head, events = _asciinema(path)
        assert head["session"]["command"] is not None
        assert _output(events) == "out1\nerr1\nout2\n"  # in the order they came
        assert asciicast.parse_end(events[-1][2]) == {"reason": "exited", "code": "3"}
        assert _asciinema_cat(path) == b"out1\nerr1\nout2\n"
        _check_ended(d, "rec-cmd", rec_dir)


def test_a_megabyte_of_random_bytes(users: Users) -> None:
    data = os.urandom(1 << 20)
    src = f"/home/{users.alice}/random.bin"
    with open(src, "wb") as fh:
        fh.write(data)
    os.chmod(src, 0o644)
    with recording() as (d, rec_dir):
        sess = _start(d, users, "rec-random", f"cat {src}")
        assert sess.stdout is not None
        out = _read_all(sess.stdout)
        status = sess.wait()
        sess.close()
        assert out == data  # the client gets every byte, unchanged
        assert status["code"] == 0
        path = os.path.join(rec_dir, "rec-random.cast")
        _, events = _asciinema(path)
        assert _output(events) == data.decode("utf-8", errors="replace")
        _asciinema_cat(path)
        _check_ended(d, "rec-random", rec_dir)


BIG = "head -c 100000 /dev/zero | tr '\\0' a; echo; echo done"


def test_max_bytes_ends_the_session(users: Users) -> None:
    with recording(max_bytes=8192, on_limit="end") as (d, rec_dir):
        sess = _start(d, users, "rec-limit-end", BIG + "; sleep 60")
        status = sess.wait()
        sess.close()
        assert status["reason"] == "recording_limit"
        path = os.path.join(rec_dir, "rec-limit-end.cast")
        assert os.path.getsize(path) <= 8192
        _, events = _asciinema(path)
        markers = [e[2] for e in events if e[1] == "m"]
        assert markers[0] == "recording stopped reason=max_bytes"
        end = asciicast.parse_end(markers[-1])
        assert end is not None
        assert end["reason"] == "recording_limit"
        stopped = d.wait_event("rec-limit-end", "recording.stopped")
        assert (stopped["cause"], stopped["action"]) == ("max_bytes", "end")
        ended = _check_ended(d, "rec-limit-end", rec_dir)
        assert ended["reason"] == "recording_limit"
        assert ended["recording"]["complete"] is False


def test_max_bytes_stops_recording_only(users: Users) -> None:
    with recording(max_bytes=8192, on_limit="stop") as (d, rec_dir):
        sess = _start(d, users, "rec-limit-stop", BIG)
        assert sess.stdout is not None
        out = _read_all(sess.stdout)
        status = sess.wait()
        sess.close()
        assert out == b"a" * 100000 + b"\ndone\n"  # the session goes on, unrecorded
        assert (status["reason"], status["code"]) == ("exited", 0)
        path = os.path.join(rec_dir, "rec-limit-stop.cast")
        assert os.path.getsize(path) <= 8192
        _, events = _asciinema(path)
        assert "done" not in _output(events)
        assert asciicast.parse_end(events[-1][2]) == {"reason": "exited", "code": "0"}
        stopped = d.wait_event("rec-limit-stop", "recording.stopped")
        assert (stopped["cause"], stopped["action"]) == ("max_bytes", "stop")
        _check_ended(d, "rec-limit-stop", rec_dir)


@contextlib.contextmanager
def _small_fs(size: str) -> Iterator[str]:
    """A tiny tmpfs as the recording directory (root-owned 0700), unmounted afterwards."""
    path = _rec_dir()
    os.makedirs(path, mode=0o700)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", path],
                   check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], check=False)


def _fill(path: str) -> None:
    with open(os.path.join(path, "filler"), "wb", buffering=0) as fh, \
            contextlib.suppress(OSError):
        while True:
            fh.write(b"\0" * 4096)


@pytest.mark.parametrize("on_failure", ["end", "continue"])
def test_full_directory_at_start(users: Users, on_failure: str) -> None:
    with _small_fs("64k") as path, recording(dir=path, on_failure=on_failure) as (d, _):
        _fill(path)
        sid = f"rec-full-{on_failure}"
        if on_failure == "end":
            from agent.errors import AgentError

            with pytest.raises(AgentError) as info:
                _start(d, users, sid, "echo ran")
            assert info.value.reason == "recording_failed"
            denied = d.wait_event(sid, "session.denied")
            assert denied["reason"] == "recording_failed"
            assert "session.started" not in d.events(sid)
            assert not os.path.exists(os.path.join(path, f"{sid}.cast"))
        else:
            sess = _start(d, users, sid, "echo ran")
            assert sess.stdout is not None
            assert _read_all(sess.stdout) == b"ran\n"
            assert sess.wait()["code"] == 0
            sess.close()
            failed = d.wait_event(sid, "recording.failed")
            assert failed["action"] == "continue"
            assert "recording" not in d.wait_event(sid, "session.ended")


@pytest.mark.parametrize("on_failure", ["end", "continue"])
def test_directory_full_mid_session(users: Users, on_failure: str) -> None:
    with _small_fs("128k") as path, recording(dir=path, on_failure=on_failure) as (d, _):
        sid = f"rec-fills-{on_failure}"
        cmd = ("echo start; sleep 0.5; head -c 400000 /dev/zero | tr '\\0' b; echo; echo done"
               + ("; sleep 60" if on_failure == "end" else ""))
        sess = _start(d, users, sid, cmd)
        assert sess.stdout is not None
        out = _read_all(sess.stdout)
        status = sess.wait()
        sess.close()
        failed = d.wait_event(sid, "recording.failed")
        assert failed["action"] == on_failure
        cast = os.path.join(path, f"{sid}.cast")
        _, events = _asciinema(cast)  # what was written is still a valid recording
        assert _output(events).startswith("start\n")
        ended = d.wait_event(sid, "session.ended")
        assert _file_digest(cast) == (ended["recording"]["bytes"], ended["recording"]["sha256"])
        assert ended["recording"]["complete"] is False
        if on_failure == "end":
            assert status["reason"] == "recording_failed"
        else:
            assert (status["reason"], status["code"]) == ("exited", 0)
            assert out == b"start\n" + b"b" * 400000 + b"\ndone\n"


def test_unsafe_directory_is_refused(users: Users) -> None:
    path = _rec_dir()
    os.makedirs(path, mode=0o755)
    os.chmod(path, 0o755)
    with recording(dir=path) as (d, _):
        from agent.errors import AgentError

        with pytest.raises(AgentError, match="mode 0700") as info:
            _start(d, users, "rec-unsafe", "echo ran")
        assert info.value.reason == "recording_failed"
        assert os.listdir(path) == []


def _as_alice(users: Users, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["setpriv", f"--reuid={users.alice}", f"--regid={users.alice}",
                           "--init-groups", "sh", "-c", script], capture_output=True,
                          text=True, timeout=30, check=False)


def _probe(rec_dir: str, cast: str) -> str:
    return (f"ls {rec_dir} >/dev/null 2>&1 && echo listed || echo no-list; "
            f"cat {cast} >/dev/null 2>&1 && echo read || echo no-read; "
            f"(echo x >> {cast}) 2>/dev/null && echo wrote || echo no-write")


def test_the_session_user_cannot_read_write_or_list(users: Users) -> None:
    with recording() as (d, rec_dir):
        sid = "rec-private"
        cast = os.path.join(rec_dir, f"{sid}.cast")
        # From inside the session, as its user, while its recording is being written:
        sess = _start(d, users, sid, _probe(rec_dir, cast), tty=True)
        assert sess.master is not None
        out = _read_all(sess.master)
        sess.wait()
        sess.close()
        assert out.split() == [b"no-list", b"no-read", b"no-write"], out
        # And from outside it, as the same account:
        probe = _as_alice(users, _probe(rec_dir, cast))
        assert probe.stdout.split() == ["no-list", "no-read", "no-write"], probe
        _check_ended(d, sid, rec_dir)


def test_daemon_sigkill_mid_session(users: Users) -> None:
    with recording() as (d, rec_dir):
        sid = "rec-sigkill"
        flag = f"/home/{users.alice}/rec-go"
        sess = _start(d, users, sid, f"echo before; while [ ! -e {flag} ]; do sleep 0.05; done;"
                      " echo after")
        assert sess.stdout is not None
        assert _read_until(sess.stdout, b"before") == b"before\n"
        assert d.stop(signal.SIGKILL) == -signal.SIGKILL
        cast = os.path.join(rec_dir, f"{sid}.cast")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # flushed within a fraction of a second
            with open(cast, "rb") as fh:
                if b'"o", "before' in fh.read():
                    break
            time.sleep(0.05)
        _, events = _asciinema(cast)  # the prefix on disk mid-session replays
        assert _output(events) == "before\n"
        open(flag, "w").close()
        assert _read_all(sess.stdout) == b"after\n"
        assert sess.wait()["code"] == 0
        sess.close()
        _, events = _asciinema(cast)
        assert _output(events) == "before\nafter\n"
        _check_ended(d, sid, rec_dir)


def _cli(d: DaemonProc, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args, "--config", d.config_path],
                          capture_output=True, text=True, timeout=60, check=False,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))


def test_cli_lists_verifies_and_replays(users: Users) -> None:
    with recording() as (d, rec_dir):
        for sid, cmd in (("rec-cli-a", "echo alpha; sleep 0.3; echo omega"),
                         ("rec-cli-b", "echo beta")):
            sess = _start(d, users, sid, cmd)
            assert sess.stdout is not None
            _read_all(sess.stdout)
            sess.wait()
            sess.close()
            _check_ended(d, sid, rec_dir)
        live = _start(d, users, "rec-cli-live", "sleep 60")
        try:
            listed = _cli(d, "recordings", "--json")
            assert listed.returncode == 0, listed.stderr
            rows = {r["id"]: r for r in json.loads(listed.stdout)}
            assert set(rows) == {"rec-cli-a", "rec-cli-b", "rec-cli-live"}
            a = rows["rec-cli-a"]
            assert (a["user"], a["verified"], a["file"]) == (users.alice, "ok", "rec-cli-a.cast")
            assert a["bytes"] == os.path.getsize(os.path.join(rec_dir, "rec-cli-a.cast"))
            assert a["duration"] >= 0.3
            assert a["started"].endswith("Z")
            assert rows["rec-cli-live"]["verified"] == "unverified"
            text = _cli(d, "recordings")
            assert "rec-cli-a" in text.stdout
            assert _cli(d, "recordings", "verify").returncode == 0

            replay = _cli(d, "replay", "rec-cli-a", "--speed", "10", "--max-idle", "0.1")
            assert replay.returncode == 0, replay.stderr
            assert replay.stdout == "alpha\nomega\n"

            # An edit after the session ended, even one that keeps the file valid and its size:
            path = os.path.join(rec_dir, "rec-cli-a.cast")
            with open(path, "rb") as fh:
                data = fh.read()
            with open(path, "wb") as fh:
                fh.write(data.replace(b"alpha", b"ALPHA"))
            bad = _cli(d, "recordings", "verify")
            assert bad.returncode == 1
            assert "rec-cli-a.cast: mismatch" in bad.stderr
            assert "rec-cli-b" not in bad.stderr
            assert _cli(d, "recordings", "verify", "rec-cli-a").returncode == 1
            assert _cli(d, "recordings", "verify", "rec-cli-b").returncode == 0
            os.unlink(os.path.join(rec_dir, "rec-cli-b.cast"))
            gone = _cli(d, "recordings", "verify", "rec-cli-b")
            assert gone.returncode == 1
            assert "rec-cli-b.cast: missing" in gone.stderr
            assert _cli(d, "replay", "nope").returncode == 1
            assert _cli(d, "replay", "../etc/passwd").returncode == 1
        finally:
            live.terminate()
            live.wait()
            live.close()


# What a hostile session writes for its recording's replay to do on the administrator's
# terminal: clipboard, title and its report, terminal queries (DSR, DA1, DA2, DECRQSS), APC, a
# hyperlink, bracketed paste and mouse reporting, and the C1 forms of CSI and OSC.
HOSTILE = (r"\033]52;c;cm0gLXJmIH4K\007", r"\033]0;evil title\033\\", r"\033[21t", r"\033[6n",
           r"\033[c", r"\033[>c", r"\033P$qm\033\\", r"\033_Gf=100;AAAA\033\\",
           r"\033]8;;https://evil.example/\033\\", r"\033[?2004h", r"\033[?1000h",
           r"\302\2336n", r"\302\2352;c1 title\302\234")


def test_replay_keeps_a_hostile_session_off_the_terminal(users: Users) -> None:
    cmd = "; ".join(f"printf '%s\\n' 'line{i}' '{seq}' 'end{i}'".replace("'%s\\n' ", "'%b\\n' ")
                    for i, seq in enumerate(HOSTILE))
    cmd += r"; printf '\033[?1049h\033[?25l\033[1;31mred'"
    with recording() as (d, rec_dir):
        sess = _start(d, users, "rec-hostile", cmd)
        assert sess.stdout is not None
        raw_out = _read_all(sess.stdout)
        sess.wait()
        sess.close()
        _check_ended(d, "rec-hostile", rec_dir)
        assert b"\x1b]52;c;" in raw_out  # the session wrote them
        assert b"\xc2\x9b6n" in raw_out

        played = _cli(d, "replay", "rec-hostile", "--speed", "100")
        assert played.returncode == 0, played.stderr
        out = played.stdout
        for bad in ("\x1b]", "\x1bP", "\x1b_", "\x1b[6n", "\x1b[c", "\x1b[>c", "\x1b[21t",
                    "\x1b[?2004h", "\x1b[?1000h", "\x07", "\u009b", "\u009d", "\u009c", "evil",
                    "cm0gLXJmIH4K"):
            assert bad not in out, bad
        for i in range(len(HOSTILE)):
            assert f"line{i}\n\nend{i}\n" in out
        assert out.endswith("\x1b[?1049h\x1b[?25l\x1b[1;31mred\x1b[?1049l\x1b[?25h\x1b[0m")

        raw = _cli(d, "replay", "rec-hostile", "--speed", "100", "--raw")
        assert raw.returncode == 0, raw.stderr
        for seq in ("\x1b]52;c;cm0gLXJmIH4K\x07", "\x1b]0;evil title\x1b\\", "\x1b[21t",
                    "\x1b[6n", "\x1b[c", "\x1b[>c", "\x1bP$qm\x1b\\", "\x1b_Gf=100;AAAA\x1b\\",
                    "\x1b]8;;https://evil.example/\x1b\\", "\x1b[?2004h", "\x1b[?1000h",
                    "\u009b6n", "\u009d2;c1 title\u009c"):
            assert seq in raw.stdout, repr(seq)
        assert raw.stdout.endswith("\x1b[1;31mred")


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_the_supervisor_memory_stays_bounded(users: Users) -> None:
    with recording(max_bytes=0) as (d, rec_dir):
        sess = _start(d, users, "rec-big", "head -c 100000000 /dev/zero | tr '\\0' c")
        assert sess.stdout is not None
        sup = next(int(r["pid"]) for r in d.client.sessions() if r["id"] == "rec-big")
        first = os.read(sess.stdout, 65536)
        before = _rss_kb(sup)
        total, peak = len(first), before
        while True:
            chunk = os.read(sess.stdout, 1 << 20)
            if not chunk:
                break
            total += len(chunk)
            if total % (8 << 20) < len(chunk):
                with contextlib.suppress(OSError, AssertionError):
                    peak = max(peak, _rss_kb(sup))
        assert sess.wait()["code"] == 0
        sess.close()
        assert total == 100000000
        assert peak - before < 8 * 1024, (before, peak)  # KiB: 100 MB went through
        ended = _check_ended(d, "rec-big", rec_dir)
        assert ended["recording"]["bytes"] > 100000000


def test_a_client_that_stops_reading_does_not_wedge_the_session(users: Users) -> None:
    with recording(max_bytes=0) as (d, rec_dir):
        sess = _start(d, users, "rec-stall", "yes stalled", tty=True)
        assert sess.master is not None
        time.sleep(1.0)  # the client reads nothing: the relay's buffers fill, `yes` blocks
        cast = os.path.join(rec_dir, "rec-stall.cast")
        size = os.path.getsize(cast)
        time.sleep(0.5)
        assert os.path.getsize(cast) - size < 1 << 20  # the writer is held back, not recorded on
        t = time.monotonic()
        sess.terminate()  # the control channel still works
        status = sess.wait()
        assert status["reason"] == "terminated"
        assert time.monotonic() - t < 10
        sess.close()
        _, events = _asciinema(cast)
        assert "stalled" in _output(events)
        _check_ended(d, "rec-stall", rec_dir)


def test_the_cli_on_a_recorded_pty(users: Users) -> None:
    with recording() as (d, rec_dir):
        proc = d.cli("session", "--session-id", "rec-cli-tty", "-t", "--run-as", "--tag",
                     f"{TAG}={users.alice}", "--", "sh", "-c", "echo on-the-pty; exit 4")
        assert proc.returncode == 4, proc.stderr
        assert b"on-the-pty" in proc.stdout
        _, events = _asciinema(os.path.join(rec_dir, "rec-cli-tty.cast"))
        assert "on-the-pty\r\n" in _output(events)
        assert asciicast.parse_end(events[-1][2]) == {"reason": "exited", "code": "4"}
        _check_ended(d, "rec-cli-tty", rec_dir)
