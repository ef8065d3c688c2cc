"""A daemon that dies before answering resets the connection; the client reports it as a typed
error (or a lost session), never as a bare ConnectionResetError."""

import socket

import pytest

from agent import protocol
from agent.client import _raise_if_error, _Reader
from agent.errors import InternalError


def _reset_connection() -> socket.socket:
    """A connection whose peer closed without reading what was sent to it (ECONNRESET)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.sendall(protocol.encode({"v": 1, "type": "ping"}))
    theirs.close()
    return ours


def test_the_connection_really_resets() -> None:
    sock = _reset_connection()
    with pytest.raises(ConnectionResetError):
        sock.recv(1)
    sock.close()


def test_a_reset_is_the_end_of_the_stream() -> None:
    sock = _reset_connection()
    assert _Reader(sock).read() is None
    sock.close()


def test_a_reset_before_the_answer_is_a_typed_error() -> None:
    sock = _reset_connection()
    with pytest.raises(InternalError, match="without an answer"):
        _raise_if_error(_Reader(sock).read())
    sock.close()
