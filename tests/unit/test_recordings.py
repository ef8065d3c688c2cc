"""Listing, verifying and playing recordings, on real files and a real audit log."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from agent import asciicast, recordings


def _cast(sid: str, ts: int, outputs: list[tuple[float, str]]) -> bytes:
    lines = [asciicast.header(width=80, height=24, timestamp=ts, term="xterm", shell="/bin/sh",
                              session_id=sid, user="alice", uid=1001, principal="p",
                              command=None)]
    lines += [asciicast.event(t, asciicast.OUTPUT, text) for t, text in outputs]
    end = outputs[-1][0] if outputs else 0.0
    lines.append(asciicast.event(end, asciicast.MARKER,
                                 asciicast.end_label("exited", {"code": 0, "signal": None})))
    return b"".join(lines)


def _ended(audit: Path, name: str, data: bytes) -> None:
    rec = {"ts": "x", "event": "session.ended", "session_id": name[:-5],
           "recording": {"file": name, "bytes": len(data),
                         "sha256": hashlib.sha256(data).hexdigest(), "complete": True}}
    with audit.open("a") as fh:
        fh.write(json.dumps(rec) + "\n")


@pytest.fixture
def node(tmp_path: Path) -> tuple[Path, Path]:
    d = tmp_path / "casts"
    d.mkdir()
    audit = tmp_path / "audit.log"
    audit.write_text('{"event": "session.started", "session_id": "a"}\nnot json\n')
    for sid, ts in (("a", 1700000000), ("b", 1700000100), ("gone", 1700000200)):
        data = _cast(sid, ts, [(0.5, f"{sid}-out\n"), (2.0, "bye\n")])
        (d / f"{sid}.cast").write_bytes(data)
        _ended(audit, f"{sid}.cast", data)
    (d / "live.cast").write_bytes(_cast("live", 1700000300, [(0.1, "x")]))
    (d / "junk.cast").write_bytes(b"not a recording\n")
    (d / "notes.txt").write_text("ignored")
    return d, audit


def test_scan_verifies_each_recording(node: tuple[Path, Path]) -> None:
    d, audit = node
    b = d / "b.cast"
    b.write_bytes(b.read_bytes().replace(b"b-out", b"B-OUT"))
    (d / "gone.cast").unlink()
    got = {e.file: e for e in recordings.scan(str(d), str(audit))}
    assert set(got) == {"a.cast", "b.cast", "gone.cast", "live.cast", "junk.cast"}
    assert got["a.cast"].verified == recordings.OK
    assert (got["a.cast"].id, got["a.cast"].user) == ("a", "alice")
    assert got["a.cast"].started == "2023-11-14T22:13:20Z"
    assert got["a.cast"].duration == 2.0
    assert got["b.cast"].verified == recordings.MISMATCH
    assert "the audit log has" in got["b.cast"].detail
    assert got["gone.cast"].verified == recordings.MISSING
    assert got["live.cast"].verified == recordings.UNVERIFIED
    assert got["junk.cast"].verified == recordings.UNVERIFIED
    assert got["junk.cast"].detail.startswith("not a recording")
    only = recordings.scan(str(d), str(audit), "a")
    assert [e.file for e in only] == ["a.cast"]


@pytest.mark.parametrize("stamp", ["Infinity", "-Infinity", "NaN", "1e400", "9" * 30, "true"])
def test_a_header_time_that_is_no_time_lists_without_one(tmp_path: Path, stamp: str) -> None:
    """A header's timestamp NaN, infinite, past time_t or a bool, and a last event at an
    infinite time: the recording is listed (no start, no duration), not a traceback."""
    d = tmp_path / "casts"
    d.mkdir()
    data = (b'{"version": 2, "width": 80, "height": 24, "timestamp": ' + stamp.encode()
            + b'}\n[0.5, "o", "x"]\n[Infinity, "o", "y"]\n')
    (d / "odd.cast").write_bytes(data)
    _ended(tmp_path / "audit.log", "odd.cast", data)
    (got,) = recordings.scan(str(d), str(tmp_path / "audit.log"))
    assert (got.file, got.started, got.verified) == ("odd.cast", None, recordings.OK)
    assert got.duration == 0.5


def test_a_missing_directory_lists_nothing(tmp_path: Path) -> None:
    assert recordings.scan(str(tmp_path / "none"), str(tmp_path / "audit.log")) == []


def test_repeat_recordings_of_an_id_belong_to_it() -> None:
    assert recordings._is_repeat("s.1.cast", "s")
    assert not recordings._is_repeat("s.x.cast", "s")
    assert not recordings._is_repeat("t.1.cast", "s")


def test_find_stays_in_the_directory(node: tuple[Path, Path]) -> None:
    d, _ = node
    assert recordings.find(str(d), "a") == str(d / "a.cast")
    for bad in ("../a", ".hidden", "nope"):
        with pytest.raises(FileNotFoundError):
            recordings.find(str(d), bad)


def test_play_keeps_the_timing(node: tuple[Path, Path]) -> None:
    d, _ = node
    out: list[str] = []
    slept: list[float] = []
    recordings.play(str(d / "a.cast"), out.append, speed=2.0, max_idle=0.5,
                    sleep=slept.append)
    assert out == ["a-out\n", "bye\n"]
    assert slept == [0.25, 0.25]


def test_play_leaves_out_a_line_cut_short(node: tuple[Path, Path]) -> None:
    d, _ = node
    p = d / "cut.cast"
    p.write_bytes(_cast("cut", 1, [(0.1, "one\n")]) + b'[0.2, "o", "tw')
    out: list[str] = []
    recordings.play(str(p), out.append, sleep=lambda _: None)
    assert out == ["one\n"]


def test_an_id_that_looks_like_a_repeat_is_its_own_session(node: tuple[Path, Path]) -> None:
    """Session "a.1" (a peer picks the id) records a.1.cast, the name a later recording of "a"
    would have had: verifying "a" does not take it for one of a's."""
    d, audit = node
    data = _cast("a.1", 1700000400, [(0.1, "not a's\n")])
    (d / "a.1.cast").write_bytes(data)
    _ended(audit, "a.1.cast", data)
    again = _cast("a", 1700000500, [(0.1, "a again\n")])
    (d / "a.2.cast").write_bytes(again)
    _ended(audit, "a.2.cast", again)
    assert [e.file for e in recordings.scan(str(d), str(audit), "a")] == ["a.cast", "a.2.cast"]
    assert [e.file for e in recordings.scan(str(d), str(audit), "a.1")] == ["a.1.cast"]


def test_find_takes_an_id_ending_in_cast_as_a_session_id(node: tuple[Path, Path]) -> None:
    d, _ = node
    (d / "a.cast.cast").write_bytes(_cast("a.cast", 1700000400, [(0.1, "x")]))
    assert recordings.find(str(d), "a.cast") == str(d / "a.cast.cast")
    assert recordings.find(str(d), "b.cast") == str(d / "b.cast")  # a file name still works


# What a hostile session account writes, each of which the administrator's terminal would act on.
HOSTILE_OUTPUT = (
    "\x1b]52;c;cm0gLXJmIH4vKgo=\x07",  # clipboard
    "\x1b]0;evil title\x1b\\",  # title
    "\x1b[21t",  # title reported back as input
    "\x1b[6n", "\x1b[c", "\x1b[>c",  # DSR, DA1, DA2: answers typed into the shell
    "\x1bP$qm\x1b\\",  # DECRQSS
    "\x1b_Gf=100;AAAA\x1b\\",  # APC
    "\x1b]8;;https://evil.example/\x1b\\",  # hyperlink
    "\x1b[?2004h", "\x1b[?1000h",  # bracketed paste, mouse reporting
    "\u009b6n", "\u009d2;c1 title\u009c",  # C1 forms
)


def _cli_node(tmp_path: Path, outputs: list[tuple[float, str]]) -> Path:
    d = tmp_path / "casts"
    d.mkdir()
    (d / "hostile.cast").write_bytes(_cast("hostile", 1700000000, outputs))
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"recording:\n  dir: {d}\naudit:\n  path: {tmp_path / 'audit.log'}\n")
    return cfg


def _hostile(tmp_path: Path) -> Path:
    outputs = [(0.01 * i, f"line{i} {seq} end{i}\r\n") for i, seq in enumerate(HOSTILE_OUTPUT)]
    # a sequence split across two output events, and a screen left in a full-screen program
    outputs += [(0.2, "\x1b]52;c;aGVsbG8"), (0.21, "=\x07split\r\n"),
                (0.3, "\x1b[?1049h\x1b[?25l\x1b[1;31mred")]
    return _cli_node(tmp_path, outputs)


def test_replay_leaves_out_what_acts_on_the_terminal(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from agent.cli import main

    cfg = _hostile(tmp_path)
    assert main(["replay", "hostile", "--speed", "1000", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    for seq in HOSTILE_OUTPUT:
        assert seq not in out
    for bad in ("\x1b]", "\x1bP", "\x1b_", "\x1b[6n", "\x1b[c", "\x1b[>c", "\x1b[21t",
                "\x1b[?2004h", "\x1b[?1000h", "\x07", "\u009b", "\u009d", "\u009c",
                "aGVsbG8", "evil"):
        assert bad not in out
    for i in range(len(HOSTILE_OUTPUT)):
        assert f"line{i}  end{i}\r\n" in out
    assert "split\r\n" in out
    assert out.endswith("\x1b[?1049h\x1b[?25l\x1b[1;31mred"
                        "\x1b[?1049l\x1b[?25h\x1b[0m")  # the program's screen undone


def test_replay_raw_passes_every_byte(tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    from agent.cli import main

    cfg = _hostile(tmp_path)
    assert main(["replay", "hostile", "--raw", "--speed", "1000", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    for seq in HOSTILE_OUTPUT:
        assert seq in out
    assert "\x1b]52;c;aGVsbG8=\x07split" in out
    assert out.endswith("\x1b[1;31mred")


def test_replay_keeps_a_plain_recording_as_it_is(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from agent.cli import main

    text = "\x1b[1;32muser@host\x1b[0m:~$ ls\r\nfile\r\n"
    cfg = _cli_node(tmp_path, [(0.1, text[:5]), (0.2, text[5:])])
    assert main(["replay", "hostile", "--speed", "1000", "--config", str(cfg)]) == 0
    assert capsys.readouterr().out == text


def test_listing_and_verify_escape_what_a_recording_says(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from agent.cli import main

    d = tmp_path / "casts"
    d.mkdir()
    audit = tmp_path / "audit.log"
    data = _cast("x\x1b]0;id\x07\u009b6n", 1700000000, [(0.1, "x")]).replace(
        b'"user": "alice"', b'"user": "al\\u001b[6nice\\u009d"')
    (d / "x.cast").write_bytes(data)
    rec = {"event": "session.ended", "session_id": "x",
           "recording": {"file": "x.cast", "bytes": "1\x1b]52;c;YQ==\x07",
                         "sha256": "\u009b6n\x1b[c", "complete": True}}
    audit.write_text(json.dumps(rec) + "\n")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"recording:\n  dir: {d}\naudit:\n  path: {audit}\n")
    assert main(["recordings", "--config", str(cfg)]) == 0
    listed = capsys.readouterr()
    assert main(["recordings", "verify", "--config", str(cfg)]) == 1
    verified = capsys.readouterr()
    for text in (listed.out, listed.err, verified.out, verified.err):
        assert not any(c in text for c in "\x1b\x07\u009b\u009d"), repr(text)
    assert "mismatch" in verified.out
    assert "al\\x1b[6nice" in listed.out


def test_replay_writes_a_lone_surrogate_as_a_replacement(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from agent.cli import main

    cfg = _cli_node(tmp_path, [(0.1, "a")])
    cast = tmp_path / "casts" / "hostile.cast"  # JSON, not the recorder, can say U+D800
    cast.write_bytes(cast.read_bytes().replace(b'"a"', b'"a\\ud800b\\n"'))
    assert main(["replay", "hostile", "--config", str(cfg)]) == 0
    assert capsys.readouterr().out == "ab\n"
    assert main(["replay", "hostile", "--raw", "--config", str(cfg)]) == 0
    assert capsys.readouterr().out == "a?b\n"
