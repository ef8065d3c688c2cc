"""The replay filter: what a hostile recording may not do to the administrator's terminal, and
what every recording still draws."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import termfilter
from agent.termfilter import Filter

E = "\x1b"
ST = E + "\\"

# Each acts outside the screen's drawing or makes the terminal answer: each is dropped whole.
HOSTILE = {
    "osc52 clipboard write": E + "]52;c;cm0gLXJmIH4K" + "\x07",
    "osc52 clipboard, ST": E + "]52;c;cm0gLXJmIH4K" + ST,
    "osc52 clipboard query": E + "]52;c;?" + "\x07",
    "osc0 title": E + "]0;pwned" + "\x07",
    "osc1 icon": E + "]1;pwned" + ST,
    "osc2 title": E + "]2;rm -rf ~" + "\x07",
    "osc8 hyperlink": E + "]8;;https://evil.example/" + ST,
    "osc8 hyperlink end": E + "]8;;" + ST,
    "osc4 palette": E + "]4;1;rgb:ff/00/00" + "\x07",
    "osc10 colour query": E + "]10;?" + "\x07",
    "osc1337 iterm": E + "]1337;File=inline=1:AAAA" + "\x07",
    "title report": E + "[21t",
    "window ops": E + "[8;100;300t" + E + "[3;0;0t" + E + "[22;0t" + E + "[14t",
    "dsr cursor": E + "[6n",
    "dsr status": E + "[5n",
    "dsr private": E + "[?6n",
    "da1": E + "[c",
    "da1 zero": E + "[0c",
    "da2": E + "[>c",
    "da3": E + "[=c",
    "decrqm": E + "[?2004$p",
    "decrqss": E + "P$qm" + ST,
    "decrqss bel": E + "P$q\"p" + "\x07",
    "xtgettcap": E + "P+q544e" + ST,
    "dcs sixel": E + "Pq#0;2;0;0;0#0~~@@vv" + ST,
    "apc kitty graphics": E + "_Gf=100,a=T;AAAA" + ST,
    "pm": E + "^private" + ST,
    "sos": E + "Xstart of string" + ST,
    "decid": E + "Z",
    "enq": "\x05",
    "bell": "\x07",
    "ris": E + "c",
    "decstr": E + "[!p",
    "bracketed paste on": E + "[?2004h",
    "mouse x10": E + "[?9h",
    "mouse normal": E + "[?1000h",
    "mouse button": E + "[?1002h",
    "mouse any": E + "[?1003h",
    "mouse sgr": E + "[?1006h",
    "mouse urxvt": E + "[?1015h",
    "focus events": E + "[?1004h",
    "cursor keys": E + "[?1h",
    "keypad application": E + "=",
    "keypad numeric": E + ">",
    "deccolm": E + "[?3h",
    "reverse video": E + "[?5h",
    "keyboard lock": E + "[2h",
    "newline mode": E + "[20h",
    "local echo off": E + "[12h",
    "modify other keys": E + "[>4;2m",
    "kitty keyboard push": E + "[>1u",
    "kitty keyboard query": E + "[?u",
    "xtversion": E + "[>0q",
    "cursor style": E + "[2 q",
    "leds": E + "[1q",
    "xtsmgraphics": E + "[?1;1;0S",
    "mouse highlight": E + "[1;2;3;4;5T",
    "media copy": E + "[5i",
    "tab set": E + "H",
    "tab clear": E + "[3g",
    "erase scrollback": E + "[3J",
    "erase scrollback decsed": E + "[?3J",
    "erase scrollback decsed, more params": E + "[?3;1J",
    "s8c1t": E + " G",
    "utf-8 off": E + "%@",
    "dec double height": E + "#3",
    "single shifts": E + "N" + E + "O",
    "locking shifts": "\x0e" + E + "n" + E + "o" + "\x0f",
    "96 charset": E + "-A",
    "c1 csi dsr": "\x9b6n",
    "c1 csi da": "\x9bc",
    "c1 osc title": "\x9d0;pwned\x9c",
    "c1 osc bel": "\x9d52;c;aGk=\x07",
    "c1 dcs": "\x90$qm\x9c",
    "c1 apc": "\x9fGa=T\x9c",
    "c1 pm": "\x9eprivate\x9c",
    "c1 sos": "\x98x\x9c",
    "c1 st alone": "\x9c",
    "c1 nel ind": "\x85\x84\x88\x8d",
    "c1 single shift": "\x8e\x8f",
    "del": "\x7f",
    "nul and others": "\x00\x01\x02\x03\x04\x06\x10\x11\x13\x1c\x1f",
    "can sub": "\x18\x1a",
    "csi with intermediate": E + "[1$r",
    "malformed csi": E + "[1;2" + "\x80",
    "private marker late": E + "[1?h",
    "lone surrogate": "\ud800",
    "huge csi": E + "[" + "1" * 500 + "n",
}

# Each draws the screen: each is kept byte for byte.
BENIGN = {
    "text": "hello, world",
    "unicode": "h\u00e9llo \u4e16\u754c \U0001f600 \u2500\u2502",
    "controls": "a\rb\nc\bd\te\x0bf\x0cg",
    "sgr reset": E + "[m" + E + "[0m",
    "sgr colours": E + "[1;31;42m" + E + "[38;5;196m" + E + "[48;2;1;2;3m" + E + "[0m",
    "sgr colon": E + "[38:2::1:2:3m" + E + "[4:3m" + E + "[0m",
    "cursor moves": E + "[A" + E + "[2B" + E + "[3C" + E + "[4D" + E + "[E" + E + "[F"
    + E + "[10G" + E + "[5;10H" + E + "[H" + E + "[3;4f" + E + "[7d" + E + "[2e" + E + "[9`"
    + E + "[2a",
    "erase": E + "[J" + E + "[0J" + E + "[1J" + E + "[2J" + E + "[K" + E + "[1K" + E + "[2K"
    + E + "[?2K" + E + "[?J" + E + "[5X",
    "insert delete": E + "[2@" + E + "[3P" + E + "[L" + E + "[2M" + E + "[3b",
    "scroll": E + "[2S" + E + "[T",
    "tab moves": E + "[2I" + E + "[Z",
    "scroll region": E + "[2;20r" + "x" + E + "[r",
    "alternate screen": E + "[?1049h" + "x" + E + "[?1049l",
    "alternate screen old": E + "[?47h" + E + "[?47l" + E + "[?1047h" + E + "[?1047l",
    "cursor visibility": E + "[?25l" + "x" + E + "[?25h",
    "save restore": E + "7" + E + "8" + E + "[s" + E + "[u" + E + "[?1048h" + E + "[?1048l",
    "index": E + "D" + E + "E" + E + "M",
    "autowrap": E + "[?7l" + "x" + E + "[?7h",
    "origin": E + "[?6h" + E + "[?6l",
    "insert mode": E + "[4h" + "x" + E + "[4l",
    "line drawing": E + "(0" + "lqk" + E + "(B" + E + ")0" + E + ")B",
    "vim start": E + "[?1049h" + E + "[H" + E + "[2J" + E + "[?25l"
    + E + "[1;1H~" + E + "[?25h" + E + "[?1049l",
}


def _run(text: str) -> str:
    f = Filter()
    return f.feed(text)


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_sequences_are_dropped(name: str) -> None:
    seq = HOSTILE[name]
    got = _run("a" + seq + "b")
    assert got == "ab" or (name == "huge csi" and got.startswith("a") and E not in got), \
        repr(got)


def test_an_osc8_link_keeps_its_text_only() -> None:
    link = HOSTILE["osc8 hyperlink"] + "https://bank.example" + HOSTILE["osc8 hyperlink end"]
    assert _run(link) == "https://bank.example"


@pytest.mark.parametrize("name", sorted(BENIGN))
def test_benign_sequences_are_kept_byte_for_byte(name: str) -> None:
    assert _run(BENIGN[name]) == BENIGN[name]


def test_modes_are_kept_only_where_allowed() -> None:
    assert _run(E + "[?1049;1000;2004;25h") == E + "[?1049;25h"
    assert _run(E + "[?1000;1002l") == ""
    assert _run(E + "[4;20h") == E + "[4h"


def _split_everywhere(text: str) -> None:
    whole = Filter().feed(text)
    for cut in range(len(text) + 1):
        f = Filter()
        assert f.feed(text[:cut]) + f.feed(text[cut:]) == whole, (text, cut)
    f = Filter()
    assert "".join(f.feed(c) for c in text) == whole, text


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_sequence_split_anywhere_is_still_dropped(name: str) -> None:
    text = "a" + HOSTILE[name] + "b"
    _split_everywhere(text)
    if name != "huge csi":
        for cut in range(len(text) + 1):
            f = Filter()
            assert f.feed(text[:cut]) + f.feed(text[cut:]) == "ab"


@pytest.mark.parametrize("name", sorted(BENIGN))
def test_a_benign_sequence_split_anywhere_is_kept(name: str) -> None:
    _split_everywhere(BENIGN[name])


_ALPHABET = st.sampled_from(
    ["a", " ", "\n", "\r", E, "[", "]", "?", ";", "1", "6", "n", "m", "h", "c", "P", "_",
     "\\", "\x07", "\x9b", "\x9c", "\x9d", "\x90", "$", "q", "0", "(", "2", "5", "J", "\x18",
     "\u00e9"])


@settings(max_examples=400, deadline=None)
@given(st.lists(_ALPHABET, max_size=40).map("".join), st.lists(st.integers(0, 40), max_size=4))
def test_pieces_never_change_the_output(text: str, cuts: list[int]) -> None:
    whole = Filter().feed(text)
    f = Filter()
    got, last = [], 0
    for cut in sorted(c for c in cuts if c <= len(text)):
        got.append(f.feed(text[last:cut]))
        last = cut
    got.append(f.feed(text[last:]))
    assert "".join(got) == whole


@settings(max_examples=400, deadline=None)
@given(st.lists(_ALPHABET, max_size=60).map("".join))
def test_nothing_unsafe_gets_through(text: str) -> None:
    """Whatever comes in, what goes out has only kept sequences."""
    out = Filter().feed(text)
    again = Filter().feed(out)
    assert again == out  # what is written is all kept: a fixed point
    for c in out:
        assert c.isprintable() or c in "\b\t\n\x0b\x0c\r\x1b", repr(out)
    for bad in ("\x9b", "\x9d", "\x07", E + "]", E + "P", E + "[6n", E + "[c", E + "_"):
        assert bad not in out


def test_an_unterminated_osc_gives_up_and_text_follows() -> None:
    f = Filter()
    assert f.feed(E + "]0;" + "x" * (termfilter.STRING_MAX - 2)) == ""  # content: MAX
    assert f.feed("visible") == "visible"
    assert f.feed(E + "]2;" + "t" * 100) == ""
    assert f.feed(("y" * (termfilter.STRING_MAX - 102)) + "\n$ after\n") == "\n$ after\n"
    g = Filter()
    assert "".join(g.feed(c) for c in E + "]0;" + "x" * (termfilter.STRING_MAX - 2) + "ok") == "ok"


def test_an_osc_ends_at_esc_and_what_follows_is_judged() -> None:
    assert _run(E + "]0;title" + E + "[31mred") == E + "[31mred"
    assert _run(E + "]0;title" + E + "[6nx") == "x"
    assert _run("\x9d0;t\x9b32mg") == E + "[32mg"
    assert _run(E + "]0;t\x18x") == "x"


def test_c1_csi_is_written_in_its_7bit_form() -> None:
    assert _run("\x9b1;31mr\x9b0m") == E + "[1;31mr" + E + "[0m"
    assert _run("\x9b?1049h") == E + "[?1049h"


def test_an_esc_before_a_control_is_dropped_and_the_control_judged() -> None:
    assert _run(E + "\n") == "\n"
    assert _run(E + E + "[6n" + E + E + "[1m") == E + "[1m"
    assert _run(E + "\u00e9") == "\u00e9"


def test_finish_undoes_what_was_left_on() -> None:
    f = Filter()
    f.feed(E + "(0" + E + "[31m" + E + "[?1049h" + E + "[?25l" + E + "[3;10r" + E + "[?7l"
           + E + "[4h" + "x")
    reset = f.finish()
    assert reset.startswith(E + "[?1049l")
    for part in (E + "7" + E + "[r" + E + "8", E + "[?7h", E + "[4l", E + "[?25h", E + "(B",
                 E + "[0m"):
        assert part in reset
    assert Filter().feed(reset) == reset  # the reset is itself kept
    assert f.finish() == ""  # afresh


def test_finish_is_empty_when_nothing_is_left_on() -> None:
    f = Filter()
    f.feed("plain" + E + "[1mbold" + E + "[m" + E + "[?1049h" + E + "[?25l" + E + "[?25h"
           + E + "[?1049l" + E + "[2;5r" + E + "[r")
    assert f.finish() == ""
    g = Filter()
    g.feed(E + "]0;unfinished")
    assert g.finish() == ""
    assert g.feed("x") == "x"


def test_finish_with_origin_mode_goes_to_a_fresh_last_line() -> None:
    f = Filter()
    f.feed(E + "[5;10r" + E + "[?6h")
    assert f.finish() == E + "[?6l" + E + "[r" + E + "[9999;1H\n"


def test_leaving_the_alternate_screen_restores_what_was_saved() -> None:
    f = Filter()
    f.feed(E + "[?1049h" + E + "[5;10r" + E + "[?6h" + E + "[1m" + E + "(0")
    # DECRC as the screen is left takes origin mode back; SGR and charset are reset anyway
    assert f.finish() == (E + "[?1049l" + E + "7" + E + "[r" + E + "8" + E + "(B" + E + "[0m"
                          + E + "7")  # the state saved before the reset is saved afresh
    g = Filter()
    g.feed(E + "[1m" + E + "7" + E + "[0m" + E + "8")
    assert g.finish() == E + "[0m" + E + "7"


@pytest.mark.parametrize("save", [E + "7", E + "[s", E + "[?1048h", E + "[?1049h"])
def test_finish_leaves_nothing_of_the_recording_in_the_saved_cursor(save: str) -> None:
    """A cursor saved with line drawing, bold or origin mode on, those reset afterwards: the
    next DECRC (another program's, after the replay) would bring them back. The end saves the
    reset state in their place."""
    f = Filter()
    f.feed(E + "(0" + E + "[1m" + E + "[2;9r" + E + "[?6h" + save + E + "[?6l" + E + "(B"
           + E + "[0m" + E + "[r")
    reset = f.finish()
    assert reset.endswith(E + "7"), repr(reset)
    g = Filter()
    g.feed("x" + save + "y")  # saved with nothing set: nothing to save afresh
    assert not g.finish().endswith(E + "7")
