"""Kernel keyrings: every session starts in a fresh session keyring of its own, owned by the
account, with PAM or without. No session sees the daemon's keyring or another session's.

The attack replayed: the daemon runs under a process that joined a session keyring of its own
and put a secret in it (systemd gives a service such a keyring, holding its invocation id). A
session that inherited that keyring would possess it: read the daemon's key, and share with
every other session whatever it adds there. Keyrings are not namespaced, so every name here is
unique to the run.
"""

from __future__ import annotations

import os
import pwd
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from agent.client import Session
from tests.conftest import Users
from tests.support.daemon import REPO, DaemonProc, make_daemon, read_until

pytestmark = pytest.mark.privileged

TAG = "SSMSessionRunAs"
SERVICE_FILE = os.path.join(REPO, "packaging", "pam", "runas-agent")
KEYINIT_LINE = "session   optional    pam_keyinit.so force revoke\n"


@dataclass(frozen=True)
class Ring:
    daemon: DaemonProc
    ring: str  # the daemon's session keyring's name
    daemon_key: str  # the description of the daemon's secret key
    daemon_key_id: int


def _key_id(description: str) -> int:
    """The serial of a key, from /proc/keys as root sees it."""
    with open("/proc/keys") as fh:
        for line in fh:
            fields = line.split()
            if fields[8].rstrip(":") == description:
                return int(fields[0], 16)
    raise AssertionError(f"no key {description!r} in /proc/keys")


def _install_service(mode: str) -> None:
    with open(SERVICE_FILE) as fh:
        text = fh.read()
    if mode == "pam-without-keyinit":  # a site stack without pam_keyinit (Debian's common-session)
        assert KEYINIT_LINE in text
        text = text.replace(KEYINIT_LINE, "")
    with open("/etc/pam.d/runas-agent", "w") as fh:
        fh.write(text)


@pytest.fixture(params=["pam-off", "pam-on", "pam-without-keyinit"])
def ring(request: pytest.FixtureRequest, users: Users) -> Iterator[Ring]:
    mode = request.param
    tag = uuid.uuid4().hex[:12]
    name, key = f"runas-daemon-ring-{tag}", f"runas_daemon_secret_{tag}"
    if mode != "pam-off":
        _install_service(mode)
    d = make_daemon({"session": {"pam": mode != "pam-off"}})
    # keyctl joins a new session keyring, the shell puts a key in it, then execs the daemon.
    prefix = ("keyctl", "session", name, "sh", "-c",
              f'keyctl add user {key} daemon-topsecret @s >/dev/null && exec "$@"', "sh")
    d.start(prefix=prefix)
    try:
        yield Ring(d, name, key, _key_id(key))
    finally:
        d.stop()
        d.cleanup()
        if os.path.exists("/etc/pam.d/runas-agent"):
            os.unlink("/etc/pam.d/runas-agent")
        shutil.rmtree(d.workdir, ignore_errors=True)


def _probe(daemon_key_id: int, daemon_key: str) -> str:
    """Shell lines that report what the session's keyrings let it see, as key=value lines."""
    return f"""
echo "ring=$(keyctl rdescribe @s)"
echo "user_ring_linked=$(keyctl show @s | grep -c -F "keyring: _uid.$(id -u)")"
if keyctl print {daemon_key_id} >/dev/null 2>&1; then echo daemon_key=readable
else echo daemon_key=unreadable; fi
if keyctl search @s user {daemon_key} >/dev/null 2>&1; then echo daemon_search=found
else echo daemon_search=absent; fi
if grep -q -e {daemon_key} /proc/keys; then echo daemon_listed=yes; else echo daemon_listed=no; fi
"""


def _values(out: bytes) -> dict[str, str]:
    pairs = (line.partition("=") for line in out.decode().splitlines())
    return {k: v for k, sep, v in pairs if sep}


def run_to_done(sess: Session) -> dict[str, str]:
    """Close SESS's stdin, read its NAME=VALUE lines up to DONE, and let it end."""
    assert sess.stdout is not None
    assert sess.stdin is not None
    os.close(sess.stdin)
    sess.stdin = None
    seen = _values(read_until(sess.stdout, b"DONE\n"))
    sess.wait()
    sess.close()
    return seen


def _expect_own_fresh_ring(values: dict[str, str], user: str, r: Ring) -> None:
    uid = pwd.getpwnam(user).pw_uid
    kind, owner, _gid, _perm, desc = values["ring"].split(";")
    assert (kind, int(owner), desc) == ("keyring", uid, "_ses"), values  # fresh, the account's
    assert desc != r.ring
    assert values["user_ring_linked"] == "1", values  # as pam_keyinit links it
    assert values["daemon_key"] == "unreadable", values
    assert values["daemon_search"] == "absent", values
    assert values["daemon_listed"] == "no", values


def test_sessions_never_share_the_daemons_or_each_others_keyring(ring: Ring,
                                                                 users: Users) -> None:
    r, d = ring, ring.daemon
    alice_key = f"runas_alice_secret_{uuid.uuid4().hex[:12]}"
    # alice's session stays open (waiting on stdin) while bob's runs: her key stays alive.
    alice = d.client.start(
        session_id=f"kr-alice-{alice_key[-12:]}", principal_arn="arn:aws:iam::1:role/A",
        tags={TAG: users.alice}, run_as_enabled=True,
        command=_probe(r.daemon_key_id, r.daemon_key)
        + f'echo "alice_key=$(keyctl add user {alice_key} alice-topsecret @s)"\n'
        + f'echo READY\nread line\necho "alice_still=$(keyctl print %user:{alice_key})"\n')
    try:
        assert alice.stdout is not None
        assert alice.stdin is not None
        seen = _values(read_until(alice.stdout, b"READY\n"))
        _expect_own_fresh_ring(seen, users.alice, r)
        alice_key_id = int(seen["alice_key"])

        bob = d.client.start(
            session_id=f"kr-bob-{alice_key[-12:]}", principal_arn="arn:aws:iam::1:role/B",
            tags={TAG: users.bob}, run_as_enabled=True,
            command=_probe(r.daemon_key_id, r.daemon_key) + f"""
if keyctl print {alice_key_id} >/dev/null 2>&1; then echo alice_key=readable
else echo alice_key=unreadable; fi
if keyctl search @s user {alice_key} >/dev/null 2>&1; then echo alice_search=found
else echo alice_search=absent; fi
if grep -q -e {alice_key} /proc/keys; then echo alice_listed=yes; else echo alice_listed=no; fi
echo DONE
""")
        bob_seen = run_to_done(bob)
        _expect_own_fresh_ring(bob_seen, users.bob, r)
        assert bob_seen["alice_key"] == "unreadable", bob_seen
        assert bob_seen["alice_search"] == "absent", bob_seen
        assert bob_seen["alice_listed"] == "no", bob_seen
        # alive all along: what bob could not read was there
        os.write(alice.stdin, b"go\n")
        assert _values(read_until(alice.stdout, b"alice_still=alice-topsecret\n"))
    finally:
        if alice.stdin is not None:
            os.close(alice.stdin)
            alice.stdin = None
        alice.wait()
        alice.close()
    # The daemon's own keyring is untouched by the sessions.
    assert _key_id(r.daemon_key) == r.daemon_key_id
