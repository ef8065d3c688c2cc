"""Property tests that complete tests/unit/test_protocol.py: control frames, mutations of a valid
start request, exact types, and frames split at arbitrary points.

Longer runs (docs/reliability.md): the same properties under many seeds, e.g.
`for s in $(seq 1 100); do pytest -q -p no:cacheprovider --hypothesis-seed=$s
tests/unit/test_protocol_fuzz.py tests/unit/test_protocol.py || break; done`.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import protocol
from agent.errors import BadRequest

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids,
                                                              max_size=4),
    max_leaves=20,
)

VALID_START: dict[str, Any] = {
    "v": 1, "type": "start", "session_id": "s-1",
    "principal": {"arn": "arn:aws:iam::1:role/x", "tags": {"SSMSessionRunAs": "alice"}},
    "preferences": {"run_as_enabled": True, "run_as_default_user": None,
                    "shell_profile": None},
    "terminal": {"term": "xterm", "rows": 24, "cols": 80},
    "command": "id -un",
    "env": {"LANG": "C.UTF-8"},
}
PATHS = [("v",), ("type",), ("session_id",), ("principal",), ("principal", "arn"),
         ("principal", "tags"), ("preferences",), ("preferences", "run_as_enabled"),
         ("preferences", "run_as_default_user"), ("preferences", "shell_profile"),
         ("terminal",), ("terminal", "term"), ("terminal", "rows"), ("terminal", "cols"),
         ("command",), ("env",)]


def _copy() -> dict[str, Any]:
    return dict(json.loads(json.dumps(VALID_START)))


def _set(obj: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        obj = obj[key]
    obj[path[-1]] = value


def _check_exact(req: protocol.StartRequest) -> None:
    """An accepted request holds exactly the types the protocol promises."""
    assert type(req.session_id) is str
    assert type(req.principal.arn) is str
    assert all(type(k) is str and type(v) is str for k, v in req.principal.tags.items())
    assert req.preferences.run_as_enabled in (None, True, False)
    if req.terminal is not None:
        assert type(req.terminal.rows) is int
        assert type(req.terminal.cols) is int
    assert req.command is None or type(req.command) is str
    for s in (req.session_id, req.principal.arn, req.command or ""):
        assert "\x00" not in s


def test_the_valid_start_is_valid() -> None:
    req = protocol.parse_request(_copy())
    assert isinstance(req, protocol.StartRequest)
    _check_exact(req)


@settings(max_examples=3000)
@given(st.sampled_from(PATHS), JSON)
def test_one_mutated_field_is_refused_or_still_exact(path: tuple[str, ...], value: Any) -> None:
    obj = _copy()
    _set(obj, path, value)
    try:
        req = protocol.parse_request(obj)
    except BadRequest:
        return
    assert isinstance(req, protocol.StartRequest)
    _check_exact(req)


@settings(max_examples=500)
@given(st.sampled_from(PATHS), st.text(min_size=1, max_size=10))
def test_an_unknown_field_anywhere_is_refused(path: tuple[str, ...], name: str) -> None:
    obj = _copy()
    target: Any = obj
    for key in path[:-1]:
        target = target[key]
    if not isinstance(target, dict) or name in target:
        return
    if path[:-1] in ((), ("principal",), ("preferences",), ("terminal",)):
        target[name] = 1
        if path[:-1] == ("principal",) and name == "tags":
            return
        with pytest.raises(BadRequest):
            protocol.parse_request(obj)


@pytest.mark.parametrize("v", [True, 1.0, "1", [1], None, 0, 2])
def test_the_version_is_exactly_the_integer_1(v: Any) -> None:
    for msg in ({"v": v, "type": "ping"}, {"v": v, "type": "terminate"}):
        with pytest.raises(BadRequest):
            protocol.parse_request(msg)
    with pytest.raises(BadRequest):
        protocol.parse_control({"v": v, "type": "terminate"})


@settings(max_examples=1500)
@given(st.dictionaries(st.sampled_from(["v", "type", "rows", "cols", "x"]), JSON, max_size=5))
def test_control_validation_is_total(obj: dict[str, Any]) -> None:
    try:
        ctl = protocol.parse_control(obj)
    except BadRequest:
        return
    assert type(obj["v"]) is int
    assert obj["v"] == 1
    if isinstance(ctl, protocol.ResizeControl):
        for n in (ctl.rows, ctl.cols):
            assert type(n) is int
            assert 1 <= n <= protocol.MAX_DIM
    else:
        assert isinstance(ctl, protocol.TerminateControl)


@settings(max_examples=1000)
@given(st.lists(st.integers(min_value=0, max_value=400), max_size=10),
       st.integers(min_value=1, max_value=3))
def test_frames_split_anywhere_decode_the_same(cuts: list[int], copies: int) -> None:
    data = protocol.encode(VALID_START) * copies
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]
    dec = protocol.FrameDecoder()
    msgs: list[dict[str, Any]] = []
    for piece in pieces:
        msgs.extend(dec.feed(piece))
    assert msgs == [VALID_START] * copies
    assert not dec.pending


@settings(max_examples=2000)
@given(st.binary(min_size=4, max_size=64), st.integers(min_value=0, max_value=70000))
def test_a_declared_length_is_never_trusted(body: bytes, declared: int) -> None:
    dec = protocol.FrameDecoder(max_frame=65536)
    data = declared.to_bytes(4, "big") + body
    try:
        msgs = dec.feed(data)
    except BadRequest:
        return
    assert len(msgs) <= 1
    if declared > len(body):
        assert msgs == []  # waits for the rest; never reads past what arrived
