"""The recorder's file handling and the relay's bounded pumps, on real files and pipes."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from agent import asciicast, relay
from agent.config import RecordingConfig
from agent.errors import RecordingFailed
from agent.recording import RESERVE, Recorder

HEAD = asciicast.header(width=80, height=24, timestamp=0, term=None, shell="/bin/sh",
                        session_id="s", user="u", uid=1000, principal="p", command="x")


def _cfg(path: Path, **kw: object) -> RecordingConfig:
    return RecordingConfig(enabled=True, dir=str(path), **kw)  # type: ignore[arg-type]


def _digest(path: str) -> tuple[int, str]:
    data = Path(path).read_bytes()
    return len(data), hashlib.sha256(data).hexdigest()


def test_file_and_directory_are_private_and_hashed(tmp_path: Path) -> None:
    d = tmp_path / "casts"
    rec = Recorder.create(_cfg(d), "s-1", HEAD)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(rec.path).st_mode) == 0o600
    rec.output(b"hello \xe2\x82")
    rec.output(b"\xac")
    rec.resize(30, 100)
    summary = rec.close("exited", {"code": 0, "signal": None})
    assert summary.file == "s-1.cast"
    assert summary.complete
    assert _digest(rec.path) == (summary.bytes, summary.sha256)
    parsed = asciicast.parse(Path(rec.path).read_bytes())
    assert "".join(t for _, k, t in parsed.events if k == "o") == "hello €"
    assert parsed.end == {"reason": "exited", "code": "0"}


def test_a_reused_id_gets_a_new_file(tmp_path: Path) -> None:
    first = Recorder.create(_cfg(tmp_path / "c"), "s", HEAD)
    second = Recorder.create(_cfg(tmp_path / "c"), "s", HEAD)
    assert (first.file, second.file) == ("s.cast", "s.1.cast")


def test_a_symlink_or_open_directory_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(RecordingFailed):
        Recorder.create(_cfg(tmp_path / "link"), "s", HEAD)
    os.chmod(real, 0o750)
    with pytest.raises(RecordingFailed, match="mode 0700"):
        Recorder.create(_cfg(real), "s", HEAD)
    assert os.listdir(real) == []


def test_an_existing_symlink_is_not_followed(tmp_path: Path) -> None:
    d = tmp_path / "c"
    d.mkdir(mode=0o700)
    target = tmp_path / "target"
    target.write_text("keep")
    for n in range(100):
        os.symlink(target, d / (f"s.{n}.cast" if n else "s.cast"))
    with pytest.raises(RecordingFailed):
        Recorder.create(_cfg(d), "s", HEAD)
    assert target.read_text() == "keep"


def test_limit_stops_recording_within_max_bytes(tmp_path: Path) -> None:
    rec = Recorder.create(_cfg(tmp_path / "c", max_bytes=4096), "s", HEAD)
    for _ in range(100):
        rec.output(b"x" * 100)
    assert rec.stopped == "max_bytes"
    assert not rec.active
    summary = rec.close("recording_limit", {"code": None, "signal": 1})
    assert not summary.complete
    assert summary.bytes <= 4096
    assert _digest(rec.path) == (summary.bytes, summary.sha256)
    parsed = asciicast.parse(Path(rec.path).read_bytes())
    labels = [t for _, k, t in parsed.events if k == "m"]
    assert labels == ["recording stopped reason=max_bytes",
                      "end reason=recording_limit signal=1"]
    assert RESERVE < 4096


def test_a_write_failure_is_a_state_not_an_exception(tmp_path: Path) -> None:
    rec = Recorder.create(_cfg(tmp_path / "c"), "s", HEAD)
    good = rec.summary()
    os.close(rec.fd)
    rec.fd = os.open("/dev/full", os.O_WRONLY)
    rec.output(b"y" * 100)
    rec.flush()
    assert rec.failed is not None
    assert not rec.active
    assert (rec.size, rec.hash.hexdigest()) == (good.bytes, good.sha256)
    summary = rec.close("exited", {"code": 0, "signal": None})
    assert not summary.complete
    assert _digest(rec.path) == (summary.bytes, summary.sha256)


def test_input_only_when_asked(tmp_path: Path) -> None:
    off = Recorder.create(_cfg(tmp_path / "c"), "off", HEAD)
    on = Recorder.create(_cfg(tmp_path / "c", input=True), "on", HEAD)
    for rec in (off, on):
        rec.input(b"secret\n")
        rec.close("exited", {"code": 0, "signal": None})
    kinds = [[k for _, k, _ in asciicast.parse(Path(r.path).read_bytes()).events]
             for r in (off, on)]
    assert kinds == [["m"], ["i", "m"]]


def test_a_pump_stops_reading_when_its_destination_is_full() -> None:
    src_r, src_w = os.pipe()
    dst_r, dst_w = os.pipe()
    seen: list[int] = []
    os.set_blocking(src_r, False)
    os.set_blocking(dst_w, False)
    os.set_blocking(src_w, False)

    def see(data: bytes) -> bool:
        seen.append(len(data))
        return True

    p = relay.Pump(src_r, dst_w, see, close_dst=True, close_src=True)
    written = 0
    try:
        while True:
            written += os.write(src_w, b"z" * 65536)
            while p.readable():
                pass
    except BlockingIOError:
        pass
    assert len(p.buf) <= relay.CHUNK
    assert (src_r, relay.READ) not in p.interest()  # nothing more is read: the writer blocks
    assert (dst_w, relay.WRITE) in p.interest()
    total = 0
    while total < written:  # the reader drains; the pump delivers every byte, in order
        total += len(os.read(dst_r, 1 << 20))
        p.writable()
        while p.readable():
            pass
    assert total == written == sum(seen)
    os.close(src_w)
    p.readable()  # end of the source: the destination is closed after its last byte
    assert not p.dst_open
    assert os.read(dst_r, 10) == b""
    os.close(dst_r)


@pytest.mark.parametrize(("on_limit", "passes"), [("end", False), ("stop", True)])
def test_output_past_the_limit_passes_only_when_the_session_goes_on_unrecorded(
        tmp_path: Path, on_limit: str, passes: bool) -> None:
    rec = Recorder.create(_cfg(tmp_path / "c", max_bytes=4096, on_limit=on_limit), "s", HEAD)
    assert rec.output(b"shown and recorded")
    assert rec.output(b"x" * 8192) is passes  # does not fit: not recorded
    assert rec.stopped == "max_bytes"
    assert rec.output(b"later") is passes
    assert rec.input(b"typed")  # input is not recorded: it always reaches the session
    rec.close("exited", {"code": 0, "signal": None})


def test_recorded_input_past_the_limit_does_not_reach_the_session(tmp_path: Path) -> None:
    rec = Recorder.create(_cfg(tmp_path / "c", max_bytes=4096, input=True), "s", HEAD)
    assert rec.input(b"ls\r")
    assert not rec.input(b"y" * 8192)
    rec.close("exited", {"code": 0, "signal": None})


def test_the_end_drain_stops_at_its_deadline_against_an_endless_source() -> None:
    """A source that never runs dry (a process left behind that floods the session's output)
    and a destination that takes everything at once (a fast client): the drain still returns
    at its deadline, so the session's end is recorded."""
    import threading
    import time

    src = os.open("/dev/zero", os.O_RDONLY)
    dst = os.open("/dev/null", os.O_WRONLY)
    pump = relay.Pump(src, dst, lambda d: True, close_dst=False, close_src=False)
    r = relay.Relay([pump], {src, dst})
    t = threading.Thread(target=r.drain, args=(time.monotonic() + 0.2,),
                         kwargs={"sweep": 1 << 20}, daemon=True)
    t.start()
    t.join(60)  # the bound asserted is the drain's own deadline, with a wide margin
    assert not t.is_alive()
    r.close()
