import json
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import protocol
from agent.errors import BadRequest


def frame(obj: Any) -> bytes:
    body = json.dumps(obj).encode()
    return struct.pack(">I", len(body)) + body


START = {
    "v": 1, "type": "start", "session_id": "s-1",
    "principal": {"arn": "arn:aws:iam::1:role/x", "tags": {"SSMSessionRunAs": "alice"}},
    "preferences": {"run_as_enabled": True, "run_as_default_user": None},
    "terminal": {"term": "xterm-256color", "rows": 24, "cols": 80},
    "command": None, "env": {"LANG": "C.UTF-8"},
}


def test_round_trip_in_pieces() -> None:
    data = protocol.encode(START) + protocol.encode({"v": 1, "type": "ping"})
    dec = protocol.FrameDecoder()
    got: list[dict[str, Any]] = []
    for i in range(len(data)):
        got.extend(dec.feed(data[i:i + 1]))
    assert got == [START, {"v": 1, "type": "ping"}]
    assert dec.pending == 0


def test_parse_start() -> None:
    req = protocol.parse_request(START)
    assert isinstance(req, protocol.StartRequest)
    assert req.principal.tags == {"SSMSessionRunAs": "alice"}
    assert req.preferences.run_as_enabled is True
    assert req.preferences.run_as_default_user is None
    assert req.terminal == protocol.Terminal("xterm-256color", 24, 80)
    assert req.env == {"LANG": "C.UTF-8"}


def test_minimal_start() -> None:
    req = protocol.parse_request({"v": 1, "type": "start", "session_id": "a",
                                  "principal": {"arn": "x"}, "command": "true"})
    assert isinstance(req, protocol.StartRequest)
    assert req.preferences == protocol.Preferences()
    assert req.terminal is None
    assert req.command == "true"


def test_other_requests() -> None:
    assert isinstance(protocol.parse_request({"v": 1, "type": "ping"}), protocol.PingRequest)
    assert isinstance(protocol.parse_request({"v": 1, "type": "list"}), protocol.ListRequest)
    t = protocol.parse_request({"v": 1, "type": "terminate", "session_id": "s-1"})
    assert t == protocol.TerminateRequest("s-1")


def test_controls() -> None:
    assert protocol.parse_control({"v": 1, "type": "resize", "rows": 5, "cols": 6}) == \
        protocol.ResizeControl(5, 6)
    assert isinstance(protocol.parse_control({"v": 1, "type": "terminate"}),
                      protocol.TerminateControl)
    with pytest.raises(BadRequest):
        protocol.parse_control({"v": 1, "type": "resize", "rows": 0, "cols": 6})


def _with(path: str, value: Any) -> dict[str, Any]:
    obj: dict[str, Any] = json.loads(json.dumps(START))
    *parents, last = path.split(".")
    cur = obj
    for p in parents:
        cur = cur[p]
    if value is KeyError:
        del cur[last]
    else:
        cur[last] = value
    return obj


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("v", 2, "unsupported protocol version"),
        ("v", True, "unsupported protocol version"),
        ("v", KeyError, "request.v: missing"),
        ("type", "exec", "unknown request type"),
        ("type", 5, "expected a string"),
        ("session_id", "../x", "invalid value"),
        ("session_id", "", "invalid value"),
        ("session_id", "a" * 129, "longer than"),
        ("session_id", KeyError, "missing"),
        ("principal", "arn", "expected an object"),
        ("principal.arn", None, "expected a string"),
        ("principal.tags", {"k": 1}, "expected a string"),
        ("principal.tags", ["a"], "expected an object"),
        ("principal.tags", None, "request.principal.tags: expected an object"),
        ("principal.extra", 1, "unknown field 'extra'"),
        ("preferences.run_as_enabled", "yes", "expected a boolean"),
        ("preferences.run_as_default_user", 5, "expected a string"),
        ("terminal.rows", 0, "integer in 1..10000"),
        ("terminal.rows", 10001, "integer in 1..10000"),
        ("terminal.cols", 1.5, "integer in 1..10000"),
        ("terminal.cols", True, "integer in 1..10000"),
        ("terminal.term", "xterm;rm -rf /", "invalid value"),
        ("terminal.rows", KeyError, "request.terminal.rows: missing"),
        ("terminal.term", KeyError, "request.terminal.term: missing"),
        ("terminal", None, "request.command: null (an interactive login shell) requires"),
        ("terminal", KeyError, "request.command: null (an interactive login shell) requires"),
        ("command", "a\x00b", "contains NUL"),
        ("command", ["id"], "expected a string"),
        ("env", {"LD_PRELOAD=x": "y"}, "invalid name"),
        ("env", {"A": "b\x00"}, "NUL"),
        ("env", None, "request.env: expected an object"),
        ("env", {f"V{i}": "x" for i in range(65)}, "more than 64"),
        ("extra", 1, "unknown field 'extra'"),
    ],
)
def test_invalid_requests_name_the_problem(path: str, value: Any, message: str) -> None:
    with pytest.raises(BadRequest) as info:
        protocol.parse_request(_with(path, value))
    assert message in str(info.value)


@pytest.mark.parametrize(
    "data",
    [
        struct.pack(">I", 70000),
        struct.pack(">I", 0xFFFFFFFF) + b"x",
        struct.pack(">I", 3) + b"\xff\xfe\xfd",
        struct.pack(">I", 4) + b"null",
        struct.pack(">I", 2) + b"[]",
        struct.pack(">I", 5) + b"{bad}",
        frame("[" * 60000),
    ],
)
def test_bad_frames_are_bad_request(data: bytes) -> None:
    with pytest.raises(BadRequest):
        protocol.FrameDecoder(max_frame=65536).feed(data)


def test_deep_nesting_is_rejected_not_a_crash() -> None:
    body = b"[" * 50000 + b"]" * 50000
    with pytest.raises(BadRequest):
        protocol.FrameDecoder(max_frame=200000).feed(struct.pack(">I", len(body)) + body)


@settings(max_examples=3000)
@given(st.binary(max_size=300))
def test_decoder_never_raises_anything_but_bad_request(data: bytes) -> None:
    dec = protocol.FrameDecoder(max_frame=256)
    try:
        for msg in dec.feed(data):
            try:
                protocol.parse_request(msg)
            except BadRequest:
                pass
    except BadRequest:
        pass


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids,
                                                              max_size=4),
    max_leaves=20,
)


# 3000 recursive examples take ~25 s of CPU under Python 3.9: more than the default timeout
# on a busy machine, so this one has its own.
@pytest.mark.timeout(600)
@settings(max_examples=3000, deadline=None)
@given(st.dictionaries(st.sampled_from(
    ["v", "type", "session_id", "principal", "preferences", "terminal", "command", "env", "x"]),
    JSON, max_size=9))
def test_request_validation_is_total(obj: dict[str, Any]) -> None:
    """Whatever JSON object arrives, the result is a typed request or BadRequest."""
    try:
        req = protocol.parse_request(obj)
    except BadRequest:
        return
    assert isinstance(req, (protocol.StartRequest, protocol.ListRequest,
                            protocol.TerminateRequest, protocol.PingRequest))


@settings(max_examples=1000)
@given(st.fixed_dictionaries({"v": st.just(1), "type": st.just("start"),
                              "session_id": st.from_regex(r"[a-z0-9]{1,20}", fullmatch=True),
                              "principal": st.fixed_dictionaries({"arn": st.text(max_size=50)}),
                              "command": st.text(max_size=100)}))
def test_valid_starts_survive_a_round_trip(obj: dict[str, Any]) -> None:
    if "\x00" in obj["command"] or "\x00" in obj["principal"]["arn"]:
        return
    (msg,) = protocol.FrameDecoder().feed(protocol.encode(obj))
    req = protocol.parse_request(msg)
    assert isinstance(req, protocol.StartRequest)
    assert req.command == obj["command"]


@pytest.mark.parametrize(
    "body",
    [
        b'{"v":1,"type":"start","session_id":"x","principal":{"arn":"a","tags":{"\\ud800":1}}}',
        b'{"v":1,"type":"start","session_id":"x","principal":{"arn":"\\udfff"}}',
        b'{"v":1,"type":"ping","v":1}',
        b'{"v":1,"type":"start","session_id":"x","principal":{"arn":"a"},"command":NaN}',
        b'{"v":Infinity,"type":"ping"}',
    ],
    ids=["surrogate-key", "surrogate-value", "duplicate-key", "nan", "infinity"],
)
def test_strict_json(body: bytes) -> None:
    with pytest.raises(BadRequest):
        protocol.FrameDecoder().feed(struct.pack(">I", len(body)) + body)


def test_replies_are_ascii_even_for_odd_text() -> None:
    data = protocol.encode(protocol.error_reply("bad_request", "name '\u202e\x1b[2J\udcff'"))
    data[4:].decode("ascii")
    assert json.loads(data[4:])["message"] == "name '\u202e\x1b[2J\udcff'"


def test_a_bad_frame_does_not_lose_the_frames_around_it() -> None:
    dec = protocol.FrameDecoder()
    dec.push(protocol.encode({"v": 1, "type": "a"}) + frame("x")[:4] + b"{no"
             + protocol.encode({"v": 1, "type": "b"}))
    assert dec.pop() == {"v": 1, "type": "a"}
    with pytest.raises(BadRequest):
        dec.pop()
    assert dec.pop() == {"v": 1, "type": "b"}
    assert not dec.broken


def test_an_oversize_header_breaks_the_stream_for_good() -> None:
    dec = protocol.FrameDecoder(max_frame=10)
    dec.push(struct.pack(">I", 11) + b"x" * 11 + protocol.encode({"v": 1}))
    for _ in range(2):
        with pytest.raises(protocol.FrameTooLarge):
            dec.pop()
    assert dec.broken
