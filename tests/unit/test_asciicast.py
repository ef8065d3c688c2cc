"""The recording format: every byte sequence gives a file that asciinema's own reader accepts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import asciicast


def _record(chunks: list[bytes], *, end: bool = True) -> bytes:
    out = [asciicast.header(width=80, height=24, timestamp=1700000000, term="xterm",
                            shell="/bin/bash", session_id="s-1", user="alice", uid=1001,
                            principal="arn:aws:iam::1:role/A", command=None)]
    dec = asciicast.Utf8Stream()
    for i, chunk in enumerate(chunks):
        text = dec.decode(chunk)
        if text:
            out.append(asciicast.event(i * 0.5, asciicast.OUTPUT, text))
    tail = dec.finish()
    if tail:
        out.append(asciicast.event(len(chunks) * 0.5, asciicast.OUTPUT, tail))
    if end:
        out.append(asciicast.event(len(chunks) * 0.5, asciicast.MARKER,
                                   asciicast.end_label("exited", {"code": 3, "signal": None})))
    return b"".join(out)


def _asciinema_events(path: Path) -> list[Any]:
    from asciinema import asciicast as reader  # the player's own reader is the judge

    with reader.open_from_url(str(path)) as cast:
        assert cast.v2_header["version"] == 2
        return list(cast.events())


def _asciinema_cat(path: Path) -> bytes:
    proc = subprocess.run([sys.executable, "-m", "asciinema", "cat", str(path)],
                          capture_output=True, timeout=60, stdin=subprocess.DEVNULL,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_split_sequences_are_decoded_whole(tmp_path: Path) -> None:
    text = "héllo → 世界 🎉"
    data = text.encode()
    chunks = [data[i:i + 1] for i in range(len(data))]  # every sequence split
    rec = _record(chunks)
    path = tmp_path / "a.cast"
    path.write_bytes(rec)
    events = _asciinema_events(path)
    assert "".join(e[2] for e in events if e[1] == "o") == text
    assert _asciinema_cat(path).decode() == text
    assert "\ufffd" not in rec.decode()


def test_invalid_bytes_become_replacement_characters(tmp_path: Path) -> None:
    chunks = [b"ok \xff\xfe", b" \xe2\x82", b"x \xc3", b"\x28 \xed\xa0\x80 end \xf0\x9f"]
    rec = _record(chunks)
    rec.decode("utf-8")  # strict: the whole file is valid UTF-8
    path = tmp_path / "b.cast"
    path.write_bytes(rec)
    out = "".join(e[2] for e in _asciinema_events(path) if e[1] == "o")
    assert out.startswith("ok \ufffd\ufffd \ufffdx \ufffd( ")
    assert out.endswith(" end \ufffd")  # an incomplete sequence at the end of the stream
    _asciinema_cat(path)


def test_random_megabyte_gives_a_valid_file(tmp_path: Path) -> None:
    data = os.urandom(1 << 20)
    chunks = [data[i:i + 4093] for i in range(0, len(data), 4093)]
    path = tmp_path / "c.cast"
    path.write_bytes(_record(chunks))
    assert len(_asciinema_events(path)) >= len(chunks) - 1
    _asciinema_cat(path)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=20))
def test_any_bytes_in_any_chunks(chunks: list[bytes]) -> None:
    rec = _record(chunks)
    parsed = asciicast.parse(rec)
    assert not parsed.truncated
    decoded = "".join(t for _, k, t in parsed.events if k == asciicast.OUTPUT)
    assert decoded == b"".join(chunks).decode("utf-8", errors="replace")


def test_header_and_closing_marker() -> None:
    rec = asciicast.parse(_record([b"hi"]))
    assert rec.header["width"] == 80
    assert rec.header["height"] == 24
    assert rec.header["env"] == {"TERM": "xterm", "SHELL": "/bin/bash"}
    assert rec.header["session"]["id"] == "s-1"
    assert rec.header["session"]["user"] == "alice"
    assert rec.header["session"]["principal"] == "arn:aws:iam::1:role/A"
    assert rec.end == {"reason": "exited", "code": "3"}
    assert rec.duration == 0.5


def test_resize_event() -> None:
    assert asciicast.resize(1.25, 40, 120) == b'[1.25, "r", "120x40"]\n'


def test_a_cut_short_last_line_is_left_out() -> None:
    rec = _record([b"one", b"two"], end=False)
    parsed = asciicast.parse(rec + b'[2.0, "o", "thr')
    assert parsed.truncated
    assert [t for _, _, t in parsed.events] == ["one", "two"]
    assert parsed.end is None


@pytest.mark.parametrize(("bad", "where"), [
    (b"", "line 1"),
    (b'{"version": 1}\n', "line 1"),
    (b'{"version": 2, "width": 80, "height": 24}\n[1, "o"]\n', "line 2"),
    (b'{"version": 2, "width": 80, "height": 24}\n[1, "z", "x"]\n', "line 2"),
    (b'{"version": 2, "width": 80, "height": 24}\n[2, "o", "x"]\n[1, "o", "y"]\n', "line 3"),
    (b'{"version": 2, "width": 80, "height": 24}\n[1, "o", "\xff"]\n', "line 2"),
])
def test_parse_names_the_bad_line(bad: bytes, where: str) -> None:
    with pytest.raises(asciicast.FormatError, match=where):
        asciicast.parse(bad)


def test_schedule_caps_idle_and_applies_speed() -> None:
    events = [(0.5, "o", "a"), (10.0, "r", "80x24"), (20.5, "o", "b"), (21.5, "o", "c")]
    assert list(asciicast.schedule(events)) == [(0.5, "a"), (20.0, "b"), (1.0, "c")]
    assert list(asciicast.schedule(events, speed=2.0, max_idle=2.0)) == [
        (0.25, "a"), (1.0, "b"), (0.5, "c")]


def test_end_label_round_trip() -> None:
    label = asciicast.end_label("terminated", {"code": None, "signal": 9})
    assert label == "end reason=terminated signal=9"
    assert asciicast.parse_end(label) == {"reason": "terminated", "signal": "9"}
    assert asciicast.parse_end("chapter 1") is None
