"""What a replayed recording may send to the terminal it plays on.

A recording is written by the session's account, possibly a hostile one, and replayed on an
administrator's terminal. Replay keeps what draws the screen and drops everything else: printable
text; BS, HT, LF, VT, FF and CR; SGR (colours and attributes); cursor movement, save and restore;
erase, insert and delete; scroll regions and scrolling; the alternate screen, origin mode,
autowrap, insert mode and cursor visibility; the DEC line-drawing and UK character sets. Dropped:
every string sequence (OSC: titles, clipboard, hyperlinks, colours; DCS, SOS, PM, APC), every
query the terminal answers as if typed (DSR, DA, DECRQM, DECRQSS, window reports, ENQ, DECID),
modes that change what the keyboard or mouse send (bracketed paste, mouse and focus reporting,
keypad and cursor-key modes), window operations, tab stops, resets, bells and every other
control; and every sequence this module does not know or that is malformed.

Pure: no I/O. `Filter.feed` takes decoded text in pieces of any size (a sequence split across
pieces is judged whole) and returns what may be written; `Filter.finish` returns what undoes the
screen state the kept sequences left on (alternate screen, scroll region, hidden cursor, ...,
and the saved cursor's attributes).
C1 controls (U+0080-U+009F) are judged like their 7-bit forms: a kept CSI is written as ESC [.
A string sequence with no end is given up after STRING_MAX characters (its content is never
written; what follows is text again), a control sequence after CSI_MAX.
"""

from __future__ import annotations

import re

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional

CSI_MAX = 256  # characters of a control sequence, introducer included, before it is malformed
NF_MAX = 4  # intermediate characters of an ESC sequence
STRING_MAX = 65536  # characters of a string sequence before its end is no longer awaited

ESC = "\x1b"
# Ground: what is not written as it is (C0 but BS HT LF VT FF CR, DEL, C1, lone surrogates).
_GROUND_STOP = "[\x00-\x07\x0e-\x1f\x7f-\x9f\ud800-\udfff]"
# In a string: its ends (BEL, ST, ESC), the cancels (CAN, SUB) and any C1.
_STRING_STOP = "[\x07\x18\x1a\x1b\x80-\x9f]"
# Text and the commonest kept CSIs (cursor, erase in line, insert/delete, SGR), none of which
# changes what finish() undoes but SGR: a run of them is written as it is without a closer look.
# (One pattern without alternatives: several times faster in re than an exact list.)
_FAST_CSI = r"\x1b\[[0-9;:]{0,250}[@A-IK-MPXZ`abdefm]"
_RUN = f"[^{_GROUND_STOP[1:-1]}]*(?:{_FAST_CSI}[^{_GROUND_STOP[1:-1]}]*)*"
_LAST_SGR = r".*\x1b\[([0-9;:]*)m"
# A whole ESC sequence: CSI, string introducer or a short escape.
_ESCAPE = r"\x1b(?:\[([0-?]*)([ -/]*)([@-~])|([ -/]*)([0-Z\\\]-~]))"

KEPT_PRIVATE_MODES = frozenset({6, 7, 25, 47, 1047, 1048, 1049})  # CSI ? Pm h / l
KEPT_MODES = frozenset({4})  # CSI Pm h / l: insert mode
ALT_SCREENS = (47, 1047, 1049)
ERASE_KEPT = ("", "0", "1", "2")  # ED, DECSED: 3 (xterm, VTE) erases the scrollback
# CSI finals kept with plain numeric parameters: ICH CUU CUD CUF CUB CNL CPL CHA CUP ED EL IL
# DL DCH SU SD ECH CHT CBT HPA HPR REP VPA VPR HVP SGR DECSTBM SCOSC (and h, l, u: see _csi).
_CSI_KEPT = frozenset("@ABCDEFGHIJKLMPSTXZ`abdefmrs")
_ESC_KEPT = frozenset("78DEM")  # DECSC DECRC IND NEL RI
_DESIGNATE = frozenset("()*+")  # G0-G3
_CHARSETS = frozenset("0AB")  # DEC line drawing, UK, ASCII
_STRING_STARTS = frozenset("]PX^_")  # OSC DCS SOS PM APC
_C1_STRINGS = frozenset("\x9d\x90\x98\x9e\x9f")
_C1_CSI = "\x9b"
_ST_C1 = "\x9c"


class Filter:
    """The safe part of a terminal output stream, fed in pieces."""

    def __init__(self) -> None:
        self._string_stop = re.compile(_STRING_STOP)
        self._escape = re.compile(_ESCAPE)
        self._run = re.compile(_RUN)
        self._last_sgr = re.compile(_LAST_SGR, re.S)
        self._clear()

    def _clear(self) -> None:
        self._seq = ""  # an unfinished ESC sequence, as read so far (a C1 CSI as ESC [)
        self._in_string = False
        self._string_len = 0
        self._string_esc = False  # the string's last character was ESC (ST is ESC \)
        # screen state the kept sequences leave on, undone by finish()
        self._alt: list[int] = []
        self._region = False
        self._wrap_off = False
        self._insert = False
        self._hidden = False
        self._saved: Optional[tuple[bool, bool, tuple[str, ...]]] = None
        self._origin = False
        self._sgr = False
        self._charsets: tuple[str, ...] = ("B", "B", "B", "B")

    def feed(self, text: str) -> str:
        out: list[str] = []
        i, n = 0, len(text)
        while i < n:
            if self._in_string:
                i = self._skip_string(text, i)
            elif self._seq:
                i = self._continue(text, i, out)
            else:
                run = self._run.match(text, i)  # text and common kept CSIs, maybe none
                j = i if run is None else run.end()
                if j > i:
                    out.append(text[i:j])
                    if text.find(ESC, i, j) >= 0:
                        sgr = self._last_sgr.match(text, i, j)
                        if sgr is not None:
                            self._sgr = _sgr_set(sgr.group(1))
                if j == n:
                    break
                c = text[j]
                i = j + 1
                if c == ESC:
                    whole = self._escape.match(text, j)
                    if whole is not None and whole.end() - j <= CSI_MAX \
                            and len(whole.group(4) or "") <= NF_MAX:
                        i = whole.end()
                        if whole.group(3) is not None:
                            out.append(self._csi(whole.group(1), whole.group(2),
                                                 whole.group(3)))
                        else:
                            self._short(whole.group(4), whole.group(5), out)
                    else:
                        self._seq = ESC
                elif c == _C1_CSI:
                    self._seq = ESC + "["
                elif c in _C1_STRINGS:
                    self._start_string()
                # any other control: dropped
        return "".join(out)

    def finish(self) -> str:
        """What undoes the screen state the stream left on (an unfinished sequence is
        dropped). The filter starts afresh afterwards."""
        out: list[str] = []
        for mode in reversed(self._alt):
            leave = f"{ESC}[?{mode}l"
            out.append(leave)
            self._csi("?" + str(mode), "", "l")
        # The terminal's saved cursor (DECSC) holds SGR, character sets and origin mode, and a
        # later DECRC of another program would take the recording's back: saved afresh below.
        resave = self._saved is not None and _state_set(*self._saved)
        if self._origin:  # DECOM and DECSTBM home the cursor: to the last line, a fresh one
            out.append(f"{ESC}[?6l{ESC}[r{ESC}[9999;1H\n")
        elif self._region:
            out.append(f"{ESC}7{ESC}[r{ESC}8")
            resave = resave or _state_set(False, self._sgr, self._charsets)
        if self._wrap_off:
            out.append(f"{ESC}[?7h")
        if self._insert:
            out.append(f"{ESC}[4l")
        if self._hidden:
            out.append(f"{ESC}[?25h")
        for g, charset in zip("()*+", self._charsets):
            if charset != "B":
                out.append(f"{ESC}{g}B")
        if self._sgr:
            out.append(f"{ESC}[0m")
        if resave:
            out.append(f"{ESC}7")
        self._clear()
        return "".join(out)

    # strings ---------------------------------------------------------------------------

    def _start_string(self) -> None:
        self._in_string = True
        self._string_len = 0
        self._string_esc = False

    def _skip_string(self, text: str, i: int) -> int:
        """Past the string's content in TEXT from I (none of it is written)."""
        if self._string_esc:  # ESC \ is its end; ESC and anything else ends it too
            self._in_string = self._string_esc = False
            if text[i] == "\\":
                return i + 1
            self._seq = ESC
            return i
        room = STRING_MAX - self._string_len
        m = self._string_stop.search(text, i, i + room)
        if m is None:
            end = min(len(text), i + room)
            self._string_len += end - i
            if self._string_len >= STRING_MAX:
                self._in_string = False  # no end in sight: what follows is text again
            return end
        j = m.start()
        c = text[j]
        self._string_len += j - i + 1
        if c == ESC:
            self._string_esc = True
            return j + 1
        self._in_string = False
        if c in "\x07\x18\x1a" or c == _ST_C1:
            return j + 1
        return j  # another C1 ends the string and starts what it starts

    # sequences read a character at a time (split across pieces, or malformed) -----------

    def _continue(self, text: str, i: int, out: list[str]) -> int:
        seq, n = self._seq, len(text)
        while i < n:
            c = text[i]
            o = ord(c)
            if len(seq) == 1:  # ESC
                if c == "[":
                    seq += c
                elif c in _STRING_STARTS:
                    self._seq = ""
                    self._start_string()
                    return i + 1
                elif 0x20 <= o <= 0x2F:
                    seq += c
                elif 0x30 <= o <= 0x7E:
                    self._seq = ""
                    self._short("", c, out)
                    return i + 1
                else:  # ESC before a control or non-ASCII: the ESC is dropped
                    self._seq = ""
                    return i
            elif seq[1] == "[":  # CSI
                if 0x40 <= o <= 0x7E:
                    self._seq = ""
                    body = seq[2:]
                    k = len(body)
                    while k and 0x20 <= ord(body[k - 1]) <= 0x2F:
                        k -= 1
                    if re.fullmatch("[0-?]*", body[:k]):
                        out.append(self._csi(body[:k], body[k:], c))
                    return i + 1
                if 0x20 <= o <= 0x3F and len(seq) < CSI_MAX - 1:
                    seq += c
                else:  # malformed or too long: dropped; the character is read afresh
                    self._seq = ""
                    return i
            else:  # ESC, intermediates
                if 0x30 <= o <= 0x7E:
                    self._seq = ""
                    self._short(seq[1:], c, out)
                    return i + 1
                if 0x20 <= o <= 0x2F and len(seq) <= NF_MAX:
                    seq += c
                else:
                    self._seq = ""
                    return i
            i += 1
        self._seq = seq
        return i

    # judging a whole sequence -----------------------------------------------------------

    def _short(self, inter: str, final: str, out: list[str]) -> None:
        """ESC INTER FINAL: a string's start, or kept, or dropped."""
        if not inter:
            if final in _STRING_STARTS:
                self._start_string()
            elif final in _ESC_KEPT:
                if final == "7":
                    self._save()
                elif final == "8":
                    self._restore()
                out.append(ESC + final)
        elif len(inter) == 1 and inter in _DESIGNATE and final in _CHARSETS:
            g = "()*+".index(inter)
            self._charsets = (*self._charsets[:g], final, *self._charsets[g + 1:])
            out.append(ESC + inter + final)

    def _csi(self, params: str, inter: str, final: str) -> str:
        """CSI PARAMS INTER FINAL as it may be written ("" to drop it)."""
        if inter:
            return ""
        prefix = params[:1] if params[:1] in ("<", "=", ">", "?") else ""
        body = params[len(prefix):]
        if any(c in body for c in "<=>?"):
            return ""
        if final in "hl" and prefix in ("", "?"):
            kept = KEPT_PRIVATE_MODES if prefix else KEPT_MODES
            modes = [p for p in body.split(";") if p.isdigit() and int(p) in kept]
            if not modes:
                return ""
            for p in modes:
                self._mode(prefix, int(p), final == "h")
            return f"{ESC}[{prefix}{';'.join(modes)}{final}"
        if prefix == "?":
            if final not in "JK" or body not in ERASE_KEPT:  # DECSED, DECSEL
                return ""
            return f"{ESC}[?{body}{final}"
        if prefix or (final not in _CSI_KEPT and final != "u"):
            return ""
        if final in "su":  # SCOSC, SCORC (with parameters: DECSLRM, kitty keyboard)
            if body:
                return ""
            if final == "s":
                self._save()
            else:
                self._restore()
        elif ((final == "J" and body not in ERASE_KEPT)
              or (final in "ST" and (";" in body or ":" in body))):  # xterm: mouse tracking
            return ""
        elif final == "m":
            self._sgr = _sgr_set(body)
        elif final == "r":
            self._region = bool(body.strip(";"))
        return f"{ESC}[{body}{final}"

    def _mode(self, prefix: str, mode: int, on: bool) -> None:
        if not prefix:
            self._insert = on
        elif mode == 6:
            self._origin = on
        elif mode == 7:
            self._wrap_off = not on
        elif mode == 25:
            self._hidden = not on
        elif mode == 1048:
            if on:
                self._save()
            else:
                self._restore()
        elif mode in ALT_SCREENS:
            if mode == 1049 and on:
                self._save()
            if on and mode not in self._alt:
                self._alt.append(mode)
            elif not on and mode in self._alt:
                self._alt.remove(mode)
            if mode == 1049 and not on:
                self._restore()

    def _save(self) -> None:  # DECSC keeps origin mode, SGR and character sets
        self._saved = (self._origin, self._sgr, self._charsets)

    def _restore(self) -> None:
        """DECRC. Origin mode (which decides how the end moves the cursor) is taken back as
        saved; SGR and the character sets count as set if set before or after (terminals
        differ in what they restore, and resetting them once more does no harm)."""
        if self._saved is None:  # nothing saved: the defaults
            self._origin = False
            return
        self._origin = self._saved[0]
        self._sgr = self._sgr or self._saved[1]
        self._charsets = tuple(now if now != "B" else then
                               for now, then in zip(self._charsets, self._saved[2]))


def _state_set(origin: bool, sgr: bool, charsets: tuple[str, ...]) -> bool:
    """Whether a cursor state (as DECSC saves it) differs from the defaults."""
    return origin or sgr or any(c != "B" for c in charsets)


def _sgr_set(params: str) -> bool:
    """Whether SGR PARAMS leaves any attribute set (all zeros or none: a reset)."""
    return bool(params.strip("0;:"))
