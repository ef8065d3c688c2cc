"""macOS specifics. Directory queries go through the injected runner (mock-tested on Linux)."""

from __future__ import annotations

from agent.errors import AgentError, CommandFailed, SsmUserFailed
from agent.values import Frozen

TYPE_CHECKING = False  # typing is not imported at run time: start-up cost matters on the CLI
if TYPE_CHECKING:
    from collections.abc import Sequence

    from agent.platform import NewUser
    from agent.runner import Completed, Runner

DSCL = "/usr/bin/dscl"
CREATEHOMEDIR = "/usr/sbin/createhomedir"
STAFF_GID = 20
FIRST_REGULAR_UID = 501  # what System Settings gives the first user
# Hidden (IsHidden) accounts of ours: above the uids Apple gives its own service accounts, which
# it adds below 500 on OS upgrades (e.g. _oahd, 441), and far above the first regular users.
SYSTEM_UIDS = range(900, 1000)


class Darwin(Frozen):
    """A frozen value (agent.values, agent.platform)."""

    __slots__ = ("name", "runner")
    runner: Runner
    name: str

    def __init__(self, runner: Runner, name: str = "darwin") -> None:
        self._init(runner=runner, name=name)

    def account_source(self, name: str) -> str:
        """'local' when the local node (`dscl . -read /Users/NAME`) has it, else 'directory'."""
        done = self.runner([DSCL, ".", "-read", f"/Users/{name}", "UniqueID"], check=False)
        return "local" if done.returncode == 0 else "directory"

    def default_home(self, name: str) -> str:
        return f"/Users/{name}"

    def create_user(self, spec: NewUser, runner: Runner) -> bool:
        """Create a local account with dscl and its home with createhomedir.

        All or nothing: if any step fails the record is deleted again. An existing record is
        never touched (False). Primary group staff (20), no password (`*`), hidden when system.
        """
        record = f"/Users/{spec.name}"  # the record's path, and the default home
        if _dscl(runner, ".", "-read", record, "RecordName").returncode == 0:
            return False
        uid = _pick_uid(runner, spec)
        home = spec.home if spec.home is not None else record
        attrs = [
            ("UniqueID", str(uid)),
            ("PrimaryGroupID", str(STAFF_GID)),
            ("UserShell", spec.shell),
            ("NFSHomeDirectory", home),
            ("RealName", spec.name),
            ("Password", "*"),
        ]
        if spec.system:
            attrs.append(("IsHidden", "1"))
        _ok(runner, [DSCL, ".", "-create", record])
        try:
            for key, value in attrs:
                _ok(runner, [DSCL, ".", "-create", record, key, value])
            _ok(runner, [CREATEHOMEDIR, "-c", "-u", spec.name])
        except AgentError as exc:
            _dscl(runner, ".", "-delete", record)
            raise SsmUserFailed(
                f"cannot create {spec.name}: {exc.message}; the partial record was removed",
                hint=exc.hint,
            ) from exc
        return True


def _dscl(runner: Runner, *args: str) -> Completed:
    try:
        return runner([DSCL, *args], check=False)
    except CommandFailed as exc:
        raise SsmUserFailed(f"cannot query the local directory: {exc.message}") from exc


def _ok(runner: Runner, argv: Sequence[str]) -> None:
    done = runner(argv, check=False)
    if done.returncode != 0:
        lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise CommandFailed(
            f"{' '.join(argv[:4])} exited {done.returncode}: {lines[-1] if lines else 'no message'}"
        )


def _pick_uid(runner: Runner, spec: NewUser) -> int:
    done = _dscl(runner, ".", "-list", "/Users", "UniqueID")
    if done.returncode != 0:
        raise SsmUserFailed("cannot list the local users' uids (dscl . -list /Users UniqueID)")
    taken = set()
    for line in done.stdout.decode("utf-8", "replace").splitlines():
        words = line.split()
        if len(words) >= 2 and words[-1].lstrip("-").isdigit():
            taken.add(int(words[-1]))
    if spec.uid is not None:
        if spec.uid in taken:
            raise SsmUserFailed(
                f"cannot create {spec.name}: uid {spec.uid} is already in use",
                hint="choose another ssm_user.uid in the config, or leave it unset",
            )
        return spec.uid
    if spec.system:
        for uid in SYSTEM_UIDS:
            if uid not in taken:
                return uid
        raise SsmUserFailed(f"cannot create {spec.name}: no free system uid in "
                            f"{SYSTEM_UIDS.start}-{SYSTEM_UIDS.stop - 1}")
    return max([FIRST_REGULAR_UID - 1, *(u for u in taken if u < 60000)]) + 1
