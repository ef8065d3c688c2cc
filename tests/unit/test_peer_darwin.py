"""Peer credentials on macOS, from a socket that answers getsockopt as XNU does: LOCAL_PEERCRED
is a struct xucred (<sys/ucred.h>: version 0, uid, short ngroups, gid_t groups[16]) holding at
most the first 16 of the peer's groups; LOCAL_PEERPID (2, <sys/un.h>) is the peer's pid. The
directory (getgrouplist by uid) is the other seam."""

from __future__ import annotations

import struct

from agent.peer import LOCAL_PEERCRED, LOCAL_PEERPID, SOL_LOCAL, authorized, darwin_peer

UID, GID, PID = 502, 20, 4711
ALL_GROUPS = [GID, *range(700, 730)]  # 31 groups; the allowed one is the 25th
ALLOWED = 724


class XnuSocket:
    def getsockopt(self, level: int, option: int, size: int) -> bytes:
        assert level == SOL_LOCAL
        if option == LOCAL_PEERCRED:
            kernel = ALL_GROUPS[:16]
            return struct.pack("IIh16I", 0, UID, len(kernel), *kernel)[:size]
        if option == LOCAL_PEERPID:
            return struct.pack("i", PID)
        raise OSError(42, "Protocol not available")


def directory(uid: int, gid: int) -> list[int]:
    assert (uid, gid) == (UID, GID)
    return list(ALL_GROUPS)


def test_a_member_beyond_the_16th_group_is_authorized() -> None:
    peer = darwin_peer(XnuSocket(), directory)  # type: ignore[arg-type]
    assert ALLOWED not in ALL_GROUPS[:16]
    assert authorized(peer, (), {ALLOWED})
    assert not authorized(peer, (), {9999})


def test_the_peer_pid_is_read() -> None:
    peer = darwin_peer(XnuSocket(), directory)  # type: ignore[arg-type]
    assert (peer.pid, peer.uid, peer.gid) == (PID, UID, GID)


def test_a_peer_unknown_to_the_directory_keeps_its_kernel_groups() -> None:
    def unknown(uid: int, gid: int) -> list[int]:
        raise KeyError(uid)

    peer = darwin_peer(XnuSocket(), unknown)  # type: ignore[arg-type]
    assert peer.groups == tuple(ALL_GROUPS[:16])
