"""Who is on the other end of a Unix socket, and may they talk to the daemon."""

from __future__ import annotations

import struct

from agent.values import Frozen

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from collections.abc import Iterable, Mapping, Sequence
    from typing import Any, Callable, Optional

SO_PEERCRED = 17  # Linux
SO_PEERGROUPS = 59  # Linux >= 4.13
SOL_LOCAL = 0  # macOS
LOCAL_PEERCRED = 1  # macOS
LOCAL_PEERPID = 2  # macOS <sys/un.h>
XUCRED_NGROUPS = 16
_UCRED = struct.Struct("3i")
_XUCRED = struct.Struct(f"IIh{XUCRED_NGROUPS}I")
_PID = struct.Struct("i")


class Peer(Frozen):
    """The kernel's credentials of a socket's peer (a frozen value: agent.values; the client
    checks its server with this module)."""

    __slots__ = ("gid", "groups", "pid", "uid")
    pid: int  # -1 when the platform does not say
    uid: int
    gid: int
    groups: tuple[int, ...]

    def __init__(self, pid: int, uid: int, gid: int, groups: tuple[int, ...]) -> None:
        self._init(pid=pid, uid=uid, gid=gid, groups=groups)


def linux_peer(sock: socket.socket) -> Peer:
    import socket as _socket

    raw = sock.getsockopt(_socket.SOL_SOCKET, SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    try:
        # Python caps the buffer at 1024 bytes (256 groups); a peer in more groups gets ERANGE
        # and is then judged by uid and primary gid only (fail closed).
        graw = sock.getsockopt(_socket.SOL_SOCKET, SO_PEERGROUPS, 1024)
        groups = tuple(struct.unpack(f"{len(graw) // 4}I", graw[: len(graw) // 4 * 4]))
    except OSError:
        groups = ()
    return Peer(pid, uid, gid, groups)


def parse_xucred(raw: bytes) -> Peer:
    """Decode macOS's struct xucred (LOCAL_PEERCRED)."""
    version, uid, ngroups, *groups = _XUCRED.unpack(raw[: _XUCRED.size])
    if version != 0 or not 0 < ngroups <= XUCRED_NGROUPS:
        from agent.errors import Unauthorized

        raise Unauthorized("unexpected peer credential format")
    gids = tuple(groups[:ngroups])
    return Peer(-1, uid, gids[0], gids)


def darwin_peer(sock: socket.socket,
                directory_groups: Optional[Callable[[int, int], Sequence[int]]] = None) -> Peer:
    """xucred holds at most 16 groups (the kernel's list), while macOS checks the socket
    file's group against the directory: membership is resolved by uid through the directory
    (getgrouplist), so a member beyond the 16th group is not refused. LOCAL_PEERPID gives the
    pid the audit records."""
    cred = parse_xucred(sock.getsockopt(SOL_LOCAL, LOCAL_PEERCRED, _XUCRED.size))
    try:
        (pid,) = _PID.unpack(sock.getsockopt(SOL_LOCAL, LOCAL_PEERPID, _PID.size))
    except OSError:
        pid = -1
    try:
        more = tuple((directory_groups or _directory_groups)(cred.uid, cred.gid))
    except (KeyError, OSError):
        more = ()  # unknown to the directory: judged by the kernel's groups
    groups = cred.groups + tuple(g for g in more if g not in cred.groups)
    return Peer(pid, cred.uid, cred.gid, groups)


def _directory_groups(uid: int, gid: int) -> list[int]:
    import os
    import pwd

    return os.getgrouplist(pwd.getpwuid(uid).pw_name, gid)


def authorized(peer: Peer, allowed_uids: Iterable[int], allowed_gids: Iterable[int]) -> bool:
    """Root, an allowed uid, or a member (primary or supplementary) of an allowed group.
    ALLOWED_GIDS is iterated only when the uid does not decide (it may look the groups up)."""
    if peer.uid == 0 or peer.uid in set(allowed_uids):
        return True
    gids = set(allowed_gids)
    return peer.gid in gids or bool(gids.intersection(peer.groups))


def is_admin(peer: Peer, admin_gids: Iterable[int]) -> bool:
    """Root, or a member (primary or supplementary) of an admin group: sees and ends every
    session, not only the ones it started. ADMIN_GIDS is iterated only for a peer other than
    root (it may look the groups up)."""
    if peer.uid == 0:
        return True
    gids = set(admin_gids)
    return peer.gid in gids or bool(gids.intersection(peer.groups))


def may_see(peer: Peer, record: Mapping[str, Any], admin: bool) -> bool:
    """May PEER list and terminate the session of RECORD (a registry record)? Admins may; any
    other peer only a session it started itself (same uid)."""
    if admin:
        return True
    owner = record.get("peer_uid")
    return isinstance(owner, int) and not isinstance(owner, bool) and owner == peer.uid


def read_peer(sock: socket.socket, sys_platform: str) -> Peer:
    """The peer's credentials, read from the kernel (never from anything the peer sent)."""
    if sys_platform == "darwin":
        return darwin_peer(sock)
    return linux_peer(sock)
