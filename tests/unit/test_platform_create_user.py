"""Creating a local account on macOS (dscl, createhomedir), against a fake local directory.

macOS commands cannot run here; a fake runner stands in for dscl and createhomedir and keeps a
small directory of records. The tests assert the directory's resulting state, not call order.
"""

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Optional

import pytest

from agent.errors import SsmUserFailed
from agent.platform import NewUser
from agent.platform.darwin import CREATEHOMEDIR, DSCL, Darwin
from agent.runner import Completed


class FakeDirectory:
    """The local node of macOS's directory: /Users records with attributes, and home folders."""

    def __init__(self, users: Optional[dict[str, dict[str, str]]] = None,
                 fail_on: Optional[str] = None) -> None:
        self.users: dict[str, dict[str, str]] = users if users is not None else {
            "root": {"UniqueID": "0", "PrimaryGroupID": "0"},
            "nobody": {"UniqueID": "-2", "PrimaryGroupID": "-2"},
            "_www": {"UniqueID": "70", "PrimaryGroupID": "70"},
            "admin": {"UniqueID": "501", "PrimaryGroupID": "20"},
            "jane": {"UniqueID": "502", "PrimaryGroupID": "20"},
        }
        self.homes: dict[str, tuple[int, int]] = {}  # path -> (uid, gid)
        self.fail_on = fail_on  # an attribute name (or "createhomedir") whose step fails

    def __call__(self, argv: Sequence[str], *, timeout: float = 30.0,
                 input: Optional[bytes] = None, check: bool = True,
                 env: Optional[Mapping[str, str]] = None) -> Completed:
        args = list(argv)
        if args[0] == CREATEHOMEDIR:
            assert args[1:3] == ["-c", "-u"]
            if self.fail_on == "createhomedir":
                return self._fail(args, 1, "createhomedir: failed")
            rec = self.users[args[3]]
            self.homes[rec["NFSHomeDirectory"]] = (int(rec["UniqueID"]),
                                                   int(rec["PrimaryGroupID"]))
            return Completed(tuple(args), 0, b"", b"")
        assert args[:2] == [DSCL, "."]
        op, rest = args[2], args[3:]
        if op == "-list":
            assert rest == ["/Users", "UniqueID"]
            out = "".join(f"{n:<24}{a['UniqueID']}\n" for n, a in self.users.items())
            return Completed(tuple(args), 0, out.encode(), b"")
        name = rest[0].removeprefix("/Users/") if hasattr(str, "removeprefix") else rest[0][7:]
        if op == "-read":
            if name not in self.users:
                return self._fail(args, 56, "<dscl_cmd> DS Error: -14136 (eDSRecordNotFound)")
            return Completed(tuple(args), 0, f"RecordName: {name}\n".encode(), b"")
        if op == "-create":
            if len(rest) == 1:
                self.users.setdefault(name, {})
            else:
                if rest[1] == self.fail_on:
                    return self._fail(args, 40, "<main> attribute status: eDSPermissionError")
                self.users[name][rest[1]] = rest[2]
            return Completed(tuple(args), 0, b"", b"")
        if op == "-delete":
            self.users.pop(name, None)
            return Completed(tuple(args), 0, b"", b"")
        raise AssertionError(f"unexpected command {args}")

    @staticmethod
    def _fail(args: list[str], code: int, msg: str) -> Completed:
        return Completed(tuple(args), code, b"", msg.encode() + b"\n")


def test_creates_a_regular_user_with_the_next_uid_and_a_home() -> None:
    fake = FakeDirectory()
    spec = NewUser("ssm-user", "/bin/zsh")
    assert Darwin(fake).create_user(spec, fake) is True
    assert fake.users["ssm-user"] == {
        "UniqueID": "503",
        "PrimaryGroupID": "20",
        "UserShell": "/bin/zsh",
        "NFSHomeDirectory": "/Users/ssm-user",
        "RealName": "ssm-user",
        "Password": "*",
    }
    assert fake.homes == {"/Users/ssm-user": (503, 20)}


def test_first_regular_user_gets_501() -> None:
    fake = FakeDirectory({"root": {"UniqueID": "0"}, "nobody": {"UniqueID": "-2"}})
    Darwin(fake).create_user(NewUser("ssm-user", "/bin/bash"), fake)
    assert fake.users["ssm-user"]["UniqueID"] == "501"


def test_system_user_is_hidden_with_configured_home() -> None:
    fake = FakeDirectory()
    fake.users["_taken"] = {"UniqueID": "900"}
    spec = NewUser("ssm-user", "/bin/bash", system=True, home="/var/ssm-user")
    Darwin(fake).create_user(spec, fake)
    rec = fake.users["ssm-user"]
    assert rec["UniqueID"] == "901"
    assert rec["IsHidden"] == "1"
    assert rec["NFSHomeDirectory"] == "/var/ssm-user"
    assert fake.homes == {"/var/ssm-user": (901, 20)}


def test_system_user_stays_out_of_apples_service_account_uids() -> None:
    """Apple adds service accounts below 500 on OS upgrades (_oahd is 441); a uid of ours
    there would collide with the next one Apple adds, even if it is free today."""
    fake = FakeDirectory({"_oahd": {"UniqueID": "441"}, "_coreml": {"UniqueID": "280"}})
    Darwin(fake).create_user(NewUser("ssm-user", "/bin/zsh", system=True), fake)
    uid = int(fake.users["ssm-user"]["UniqueID"])
    assert uid >= 500
    assert fake.users["ssm-user"]["IsHidden"] == "1"


def test_configured_uid_is_used_and_a_taken_one_refused() -> None:
    fake = FakeDirectory()
    Darwin(fake).create_user(NewUser("ssm-user", "/bin/bash", uid=777), fake)
    assert fake.users["ssm-user"]["UniqueID"] == "777"

    fake = FakeDirectory()
    before = {k: dict(v) for k, v in fake.users.items()}
    with pytest.raises(SsmUserFailed, match="uid 502 is already in use"):
        Darwin(fake).create_user(NewUser("ssm-user", "/bin/bash", uid=502), fake)
    assert fake.users == before


def test_an_existing_record_is_never_touched() -> None:
    fake = FakeDirectory()
    fake.users["ssm-user"] = {"UniqueID": "600", "UserShell": "/bin/sh"}
    before = {k: dict(v) for k, v in fake.users.items()}
    assert Darwin(fake).create_user(NewUser("ssm-user", "/bin/bash"), fake) is False
    assert fake.users == before
    assert fake.homes == {}


@pytest.mark.parametrize("step", ["UniqueID", "UserShell", "NFSHomeDirectory", "Password",
                                  "createhomedir"])
def test_a_failed_step_leaves_no_partial_record(step: str) -> None:
    fake = FakeDirectory(fail_on=step)
    before = {k: dict(v) for k, v in fake.users.items()}
    with pytest.raises(SsmUserFailed, match="the partial record was removed"):
        Darwin(fake).create_user(NewUser("ssm-user", "/bin/bash"), fake)
    assert fake.users == before
    assert fake.homes == {}


# -- the home an account gets when the spec names none --------------------------------------


def test_default_home_follows_useradd_defaults(tmp_path: Path) -> None:
    from agent.platform.linux import Linux

    defaults = tmp_path / "useradd"
    linux = Linux(useradd_defaults=str(defaults))
    assert linux.default_home("ssm-user") == "/home/ssm-user"  # no file: useradd's own default
    defaults.write_text("# HOME=/elsewhere\nSHELL=/bin/sh\n")
    assert linux.default_home("ssm-user") == "/home/ssm-user"
    defaults.write_text("SHELL=/bin/sh\nHOME=/srv/homes\n")
    assert linux.default_home("ssm-user") == "/srv/homes/ssm-user"
    defaults.write_text('HOME="/u"\n')
    assert linux.default_home("ssm-user") == "/u/ssm-user"
    assert Darwin(FakeDirectory()).default_home("ssm-user") == "/Users/ssm-user"
