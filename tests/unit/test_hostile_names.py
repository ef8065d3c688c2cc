"""The hostile-name corpus (tests/corpus/hostile_names.txt) against account name validation."""

import pytest

from agent.accounts import NAME_MAX_BYTES, validate_name
from agent.errors import InvalidName
from tests.support.load import CORPUS, hostile_names

NAMES = hostile_names()


def test_the_corpus_is_ascii_and_big_enough() -> None:
    with open(CORPUS, "rb") as fh:
        fh.read().decode("ascii")
    assert len(NAMES) >= 100
    assert len(set(NAMES)) == len(NAMES)
    # The escapes really produced the characters they stand for.
    assert "alice\x00root" in NAMES
    assert "alice\nroot" in NAMES
    assert "r\u043e\u043et" in NAMES
    assert "DOMAIN\\\\alice" in NAMES


@pytest.mark.parametrize("name", NAMES, ids=[ascii(n)[1:-1][:40] for n in NAMES])
def test_every_hostile_name_is_refused(name: str) -> None:
    with pytest.raises(InvalidName) as info:
        validate_name(name)
    assert info.value.reason == "invalid_name"
    with pytest.raises(InvalidName):
        validate_name(name.encode("utf-8", "surrogatepass"))


@pytest.mark.parametrize("name", [
    "", "a" * (NAME_MAX_BYTES + 1), "\u00e9" * 129, b"\xff\xfe".decode("latin-1"),
])
def test_empty_overlong_and_non_ascii(name: str) -> None:
    with pytest.raises(InvalidName):
        validate_name(name)


@pytest.mark.parametrize("raw", [b"\xff", b"alice\xc0\xaf", b"\xed\xa0\x80", b"a\x00b"])
def test_invalid_utf8_bytes(raw: bytes) -> None:
    with pytest.raises(InvalidName):
        validate_name(raw)


@pytest.mark.parametrize("name", ["alice", "svc_backup$", "AD\\alice", "alice@corp.example",
                                  "a" * NAME_MAX_BYTES, "x.y-z_0"])
def test_real_names_next_to_them_are_accepted(name: str) -> None:
    assert validate_name(name) == name
