import contextlib
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.accounts import NAME_MAX_BYTES, validate_name
from agent.errors import InvalidName

GOOD = [
    "alice", "a", "bob.smith", "svc_backup", "web-01", "_apt", "HOST$", "alice@corp.example.com",
    "CORP\\alice", "A1", "x" * NAME_MAX_BYTES, "user.name-1_2",
]
HOSTILE = [
    "", "-x", "--help", "-oProxyCommand=sh", "/etc/passwd", "../root", "..", ".", "a/b", "a:b",
    "root:x:0:0", "a b", " alice", "alice ", "al\tice", "al\nice", "alice\n", "al\x00ice",
    "al\x7fice", "al\x1bice", "x" * (NAME_MAX_BYTES + 1), "x" * 300, "ａｌｉｃｅ", "alİce",
    "al;ice", "$(id)", "`id`", "a|b", "a&b", "a>b", "a*", "a?", "a'b", 'a"b', "a@b@c", "a\\b\\c",
    "@corp", "\\alice", "alice@", "a$b", "$", "alice$$", ".hidden", "al,ice", "a=b", "a%b",
    "\u200balice", "alice\u00a0", "аlice",  # zero-width space, nbsp, Cyrillic a
]


@pytest.mark.parametrize("name", GOOD)
def test_accepts_names_real_directories_use(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize("name", HOSTILE)
def test_rejects_hostile_names(name: str) -> None:
    with pytest.raises(InvalidName):
        validate_name(name)


@pytest.mark.parametrize("raw", [b"al\xffice", b"\xc3\x28", b"\xed\xa0\x80", b"alice\x80"])
def test_rejects_invalid_utf8(raw: bytes) -> None:
    with pytest.raises(InvalidName, match="UTF-8"):
        validate_name(raw)


def test_rejects_surrogate_escaped_argv() -> None:
    # What the CLI receives for invalid UTF-8 in argv.
    with pytest.raises(InvalidName):
        validate_name(b"al\xffice".decode("utf-8", "surrogateescape"))


def test_accepts_valid_utf8_bytes() -> None:
    assert validate_name(b"alice") == "alice"


SAFE = set(string.ascii_letters + string.digits + "._-@\\$")


@settings(max_examples=3000)
@given(st.text(min_size=0, max_size=300))
def test_any_accepted_name_is_safe(name: str) -> None:
    try:
        got = validate_name(name)
    except InvalidName:
        return
    assert got == name
    assert set(got) <= SAFE
    assert not got.startswith(("-", ".", "@", "\\"))
    assert 0 < len(got.encode()) <= NAME_MAX_BYTES
    assert got.count("@") + got.count("\\") <= 1
    assert "$" not in got[:-1]


@settings(max_examples=1000)
@given(
    st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=20),
    st.sampled_from(list(" \t\n\r\x00\x0b\x0c\x1b\x7f/:;|&`$(){}<>*?'\"\u3000\uff41\u200b")),
    st.integers(min_value=0, max_value=20),
)
def test_a_hostile_character_anywhere_is_rejected(base: str, bad: str, pos: int) -> None:
    name = base[:pos] + bad + base[pos:]
    if bad == "$" and name.endswith("$") and name.count("$") == 1:
        return  # a trailing $ is legal (machine accounts)
    with pytest.raises(InvalidName):
        validate_name(name)


@given(st.binary(min_size=1, max_size=64))
def test_bytes_never_crash(raw: bytes) -> None:
    with contextlib.suppress(InvalidName):
        validate_name(raw)
