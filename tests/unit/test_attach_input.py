"""Standard input on its way into a session, against macOS's selector as the kernel behaves.

kqueue (macOS's DefaultSelector) accepts a regular file, reports it readable while there is data
after the file offset, and never reports its end; epoll refuses one outright (EPERM). The fake
below is a real select() selector that treats regular files as kqueue does."""

from __future__ import annotations

import os
import selectors
import stat
from pathlib import Path
from typing import Any, Optional

from agent.attach import _dispatch_input, _Input, _select


def _fd(fileobj: Any) -> int:
    return fileobj if isinstance(fileobj, int) else int(fileobj.fileno())


class KqueueLikeSelector(selectors.SelectSelector):
    def __init__(self) -> None:
        super().__init__()
        self.files: dict[int, selectors.SelectorKey] = {}

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        fd = _fd(fileobj)
        if stat.S_ISREG(os.fstat(fd).st_mode):
            key = selectors.SelectorKey(fileobj, fd, events, data)
            self.files[fd] = key
            return key
        return super().register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        fd = _fd(fileobj)
        if fd in self.files:
            return self.files.pop(fd)
        return super().unregister(fileobj)

    def select(self, timeout: Optional[float] = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = [(k, selectors.EVENT_READ) for fd, k in self.files.items()
                 if os.lseek(fd, 0, os.SEEK_CUR) < os.fstat(fd).st_size]  # never at the end
        return ready + super().select(0 if ready else timeout)


def test_a_regular_file_as_stdin_reaches_the_session_with_its_end(tmp_path: Path) -> None:
    data = b"line of input\n" * 500
    path = tmp_path / "input"
    path.write_bytes(data)
    r, w = os.pipe()
    os.set_blocking(r, False)
    sel = KqueueLikeSelector()
    got = b""
    try:
        with path.open("rb") as fh:
            inp = _Input(sel, fh.fileno(), w)
            for _ in range(200):
                for key, _mask in _select(sel, inp, 0.0):
                    _dispatch_input(key)
                try:
                    got += os.read(r, 1 << 16)
                except BlockingIOError:
                    pass
                if inp.done:
                    break
            assert inp.done, "the session never got the end of its input"
        while True:
            chunk = os.read(r, 1 << 16)
            if not chunk:
                break
            got += chunk
        assert got == data
    finally:
        os.close(r)
        sel.close()
        if not inp.done:
            os.close(w)
