"""PAM account and session stages through libpam (ctypes), one handle for a session's whole life.

No authentication stage: the session transport has already authenticated the principal. The
handle lives in a small root process of its own per session (the PAM process, `open_login`),
forked by the per-session supervisor, never in the supervisor and never in the long-lived
daemon: modules change the process that calls them (pam_loginuid its loginuid, pam_limits its
resource limits, pam_umask its umask, pam_systemd its cgroup, pam_group its groups), and a
user's `hard fsize 8` in the supervisor would stop it writing the audit log (root without
CAP_SYS_RESOURCE cannot raise a hard limit back). The PAM process reports what the stages set,
and the supervisor gives that to the shell's process alone.

Call order, following OpenSSH (sshd.c and session.c), implemented by `login()` in the PAM
process:

  1. pam_start(service, user) with a conversation that answers no prompt; PAM_TTY, PAM_RUSER,
     PAM_RHOST set when given.
  2. pam_acct_mgmt: the account stage (expired account, password change forced, /etc/nologin,
     access rules). Any refusal raises AccountRefused and nothing is spawned.
  3. initgroups semantics: setgroups(getgrouplist(user, gid)).
  4. pam_setcred(PAM_ESTABLISH_CRED). Credentials may take the form of supplementary groups
     (pam_group adds them to the calling process), so they are established after step 3, which
     would otherwise wipe them; sshd re-establishes them after initgroups for the same reason.
     The session's group set is then read back with getgroups().
  5. pam_open_session: pam_loginuid writes the process's /proc/self/loginuid, pam_limits sets
     its rlimits, pam_systemd moves it into a logind session scope, pam_keyinit gives it a
     fresh session keyring. Credentials come before the session, as pam_setcred(3) requires.
     What the stages set in the resource limits, umask and nice value is captured
     (agent.proclimits).
  6. pam_getenvlist: the PAM environment, for the caller to merge into the session's.

The PAM process (`open_login`, `_pam_process`) then sends the supervisor, over a pipe, what
steps 4-6 set: the groups, the environment, the limits, umask and nice value, the loginuid (when
pam_loginuid set one) and its cgroup v2 path (when a module moved it, as pam_systemd does); or
the error, whose reason code comes back as the same AgentError class (account_refused,
pam_failed). A report is JSON, at most REPORT_MAX bytes. It keeps only stdin, stdout, stderr and
its two pipes (none of the client's descriptors, not the connection), and ignores SIGHUP, SIGINT
and SIGTERM: it ends when told to.

  7. (supervisor) fork the shell's child: the captured limits and loginuid (as root), then
     setgroups(groups from step 4), setresgid, setresuid, exec; the child joins the logind scope
     at its exec gate, and the PAM process leaves that scope for the supervisor's cgroup.
  8. at the end, `Opened.close()`: the supervisor says close (or dies: the pipe closes), and the
     PAM process runs pam_close_session (if opened), pam_setcred(PAM_DELETE_CRED) (if
     established), pam_end, in that order, as sshd's cleanup does, and exits. The supervisor
     reaps it, and kills it after CLOSE_TIMEOUT, with every process below it (what its modules
     started, such as a pam_exec program). A PAM process that ended before it was told
     (killed, crashed) never closed the session: its owner reports it (`PamProcess.ended`) and
     `close()` raises PamFailed, as it does for any close that was not clean.

The PAM process is forked before the supervisor makes `session.requested` durable and calls
nothing of libpam until it is told to begin (`open_login`'s BEFORE), so its fork and set-up
overlap that fsync. The daemon loads libpam and the modules of the service's stack once before
its first fork (`prewarm`): each PAM process inherits them mapped and relocated, and its
pam_start only reads the service's files.

The library is loaded on first use: importing this module does no work.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass

from agent.errors import AccountRefused, AgentError, PamFailed

TYPE_CHECKING = False  # typing is not imported at run time: start-up cost matters on the CLI
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any, Callable, NoReturn, Optional

    from agent.proclimits import ProcessLimits

DEFAULT_SERVICE = "runas-agent"
PAM_DIR = "/etc/pam.d"
_SERVICE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MAX_MESSAGES = 32  # PAM_MAX_NUM_MSG


@dataclass(frozen=True)
class Constants:
    """The numbers of one PAM implementation (Linux-PAM and OpenPAM differ)."""

    success: int
    conv_err: int
    buf_err: int
    perm_denied: int
    auth_err: int
    user_unknown: int
    new_authtok_reqd: int
    acct_expired: int
    authtok_expired: int
    tty: int
    rhost: int
    ruser: int
    establish_cred: int
    delete_cred: int
    prompt_echo_off: int = 1
    prompt_echo_on: int = 2
    error_msg: int = 3
    text_info: int = 4

    def refusals(self) -> frozenset[int]:
        """Account-stage results that mean "this account may not log in now"."""
        return frozenset({self.perm_denied, self.auth_err, self.user_unknown,
                          self.new_authtok_reqd, self.acct_expired, self.authtok_expired})


# security/_pam_types.h of Linux-PAM (checked against pam_strerror of libpam0g 1.5.2).
LINUX_PAM = Constants(
    success=0, conv_err=19, buf_err=5, perm_denied=6, auth_err=7, user_unknown=10,
    new_authtok_reqd=12, acct_expired=13, authtok_expired=27,
    tty=3, rhost=4, ruser=8, establish_cred=0x2, delete_cred=0x4,
)
# security/pam_constants.h of OpenPAM (macOS, FreeBSD).
OPENPAM = Constants(
    success=0, conv_err=6, buf_err=5, perm_denied=7, auth_err=9, user_unknown=13,
    new_authtok_reqd=10, acct_expired=17, authtok_expired=18,
    tty=3, rhost=4, ruser=8, establish_cred=0x1, delete_cred=0x2,
)


@dataclass(frozen=True)
class Message:
    """An informational or error message a module sent through the conversation."""

    style: str  # "error", "info" or "prompt" (a prompt is refused, its text kept for diagnosis)
    text: str


@dataclass(frozen=True)
class Libpam:
    """libpam with its prototypes set, the C allocator it frees with, and its constants."""

    pam: Any
    libc: Any
    consts: Constants
    conv_type: Any  # the CFUNCTYPE of the conversation function
    conv_struct: Any  # struct pam_conv
    message_struct: Any  # struct pam_message
    response_struct: Any  # struct pam_response
    path: str


def library_candidates(sys_platform: str = sys.platform) -> tuple[str, ...]:
    """Where libpam is looked for, in order (the soname first; no search unless it fails)."""
    if sys_platform == "darwin":
        return ("/usr/lib/libpam.dylib", "/usr/lib/libpam.2.dylib")
    return ("libpam.so.0",)


def load(sys_platform: str = sys.platform, candidates: Optional[Sequence[str]] = None) -> Libpam:
    """Load libpam and declare the functions used here. Raises PamFailed when it is absent.

    CANDIDATES replaces the default list (and its ld.so cache fallback).
    """
    import ctypes

    tried: list[str] = []
    names = list(library_candidates(sys_platform) if candidates is None else candidates)
    lib, path = _open_first(names, tried)
    if lib is None and candidates is None and sys_platform != "darwin":
        import ctypes.util

        found = ctypes.util.find_library("pam")  # the ld.so cache, for an unusual soname
        if found is not None and found not in names:
            lib, path = _open_first([found], tried)
    if lib is None:
        raise PamFailed(
            "libpam cannot be loaded: " + "; ".join(tried),
            hint="install libpam0g (Debian/Ubuntu) or pam (RHEL/Amazon Linux), "
            "or set session.pam: false",
        )
    libc = ctypes.CDLL(None)  # the process's C library: libpam frees with its free()

    class PamMessage(ctypes.Structure):
        _fields_ = [("msg_style", ctypes.c_int), ("msg", ctypes.c_char_p)]

    class PamResponse(ctypes.Structure):
        _fields_ = [("resp", ctypes.c_void_p), ("resp_retcode", ctypes.c_int)]

    conv_type = ctypes.CFUNCTYPE(
        ctypes.c_int,
        ctypes.c_int,
        ctypes.POINTER(ctypes.POINTER(PamMessage)),
        ctypes.POINTER(ctypes.POINTER(PamResponse)),
        ctypes.c_void_p,
    )

    class PamConv(ctypes.Structure):
        _fields_ = [("conv", conv_type), ("appdata_ptr", ctypes.c_void_p)]

    handle_fns = ("pam_acct_mgmt", "pam_setcred", "pam_open_session", "pam_close_session",
                  "pam_end")
    try:
        lib.pam_start.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(PamConv),
                                  ctypes.POINTER(ctypes.c_void_p)]
        lib.pam_start.restype = ctypes.c_int
        for fn in handle_fns:
            getattr(lib, fn).argtypes = [ctypes.c_void_p, ctypes.c_int]
            getattr(lib, fn).restype = ctypes.c_int
        lib.pam_set_item.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p]
        lib.pam_set_item.restype = ctypes.c_int
        lib.pam_strerror.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.pam_strerror.restype = ctypes.c_char_p
        lib.pam_getenvlist.argtypes = [ctypes.c_void_p]
        lib.pam_getenvlist.restype = ctypes.POINTER(ctypes.c_void_p)
        libc.calloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]
        libc.calloc.restype = ctypes.c_void_p
        libc.free.argtypes = [ctypes.c_void_p]
        libc.free.restype = None
    except AttributeError as exc:
        raise PamFailed(f"{path} is not a usable libpam: {exc}") from exc
    consts = OPENPAM if sys_platform == "darwin" else LINUX_PAM
    return Libpam(lib, libc, consts, conv_type, PamConv, PamMessage, PamResponse, path)


def _open_first(names: Sequence[str], tried: list[str]) -> tuple[Any, str]:
    import ctypes

    for name in names:
        try:
            return ctypes.CDLL(name, use_errno=True), name
        except OSError as exc:
            tried.append(f"{name}: {exc}")
    return None, ""


def prewarm(service: str) -> Libpam:
    """Load libpam and every module (with the libraries they need) of SERVICE's stack in this
    process, ahead of any session, and return the loaded library for `open_login`: the PAM
    processes forked from here (through a supervisor) then neither map nor relocate them again,
    nor set up the prototypes. Linux only (/proc/self/maps).

    The modules are found by what pam_start maps: a handle is started (no user) and ended at
    once. pam_start reads the service's files and dlopens its modules; it runs no function of
    any module (no stage), so nothing of a session happens in this process. Each module is
    then opened once more here, never closed (ctypes does not dlclose), so pam_end's dlclose
    leaves it loaded. The PAM processes still start their own handle, which reads the service's
    files again: a module added later is loaded there, as before. Raises PamFailed when libpam
    cannot be loaded or pam_start fails."""
    import ctypes

    c_service = _c_string("service", check_service(service))
    lib = load()
    before = _mapped_libraries()
    conv_fn = lib.conv_type(conversation(lib, []))
    conv = lib.conv_struct(conv_fn, None)
    handle = ctypes.c_void_p()
    rc = lib.pam.pam_start(c_service, None, ctypes.byref(conv), ctypes.byref(handle))
    try:
        if rc != lib.consts.success:
            raise PamFailed(f"pam_start({service}) failed: {_strerror(lib, None, rc)}")
        for path in sorted(_mapped_libraries() - before):
            try:
                ctypes.CDLL(path)
            except OSError:
                pass  # only slower: the PAM process loads it itself
    finally:
        if handle.value:
            lib.pam.pam_end(handle, rc)
    return lib


def _mapped_libraries() -> set[str]:
    """The shared objects mapped in this process (/proc/self/maps)."""
    out: set[str] = set()
    try:
        with open("/proc/self/maps") as fh:
            for line in fh:
                path = line.rstrip("\n").partition("/")
                if path[1] and ".so" in path[2]:
                    out.add("/" + path[2])
    except OSError:
        pass
    return out


def service_installed(service: str, pam_dir: str = PAM_DIR) -> bool:
    """True when PAM_DIR/SERVICE is a regular file.

    Without it Linux-PAM would fall back to the `other` service, which is not what an admin
    configured for this agent; so PAM is used only when the agent's own file is installed.
    """
    check_service(service)
    return os.path.isfile(os.path.join(pam_dir, service))


def wanted(enabled: bool, service: str, *, sys_platform: str = sys.platform,
           pam_dir: str = PAM_DIR) -> bool:
    """Whether sessions go through PAM: on Linux, when enabled and the service file exists.

    macOS: no PAM (its stacks, pam_opendirectory and pam_launchd, are not what this agent's
    service file describes); the session still gets utmpx records.
    """
    if not enabled or sys_platform == "darwin":
        return False
    return service_installed(service, pam_dir)


def check_service(service: str) -> str:
    """A PAM service name is a plain file name in /etc/pam.d."""
    if not _SERVICE_RE.fullmatch(service):
        raise PamFailed(f"invalid PAM service name {service!r}",
                        hint="letters, digits, '.', '_' and '-', at most 64 characters")
    return service


def _c_string(what: str, value: str) -> bytes:
    raw = value.encode("utf-8", "surrogateescape")
    if b"\0" in raw or not raw:
        raise PamFailed(f"PAM {what} must be a non-empty string without NUL")
    return raw


class PamSession:
    """One PAM handle, from pam_start to pam_end, owned by the process that started it."""

    __slots__ = ("_conv", "_conv_fn", "_cred", "_handle", "_last", "_lib", "_messages",
                 "_opened", "_owner", "_passed_account", "service", "user")

    def __init__(self, lib: Libpam, handle: Any, *, conv: Any, conv_fn: Any,
                 messages: list[Message], service: str, user: str) -> None:
        self._lib = lib
        self._handle = handle
        self._conv = conv  # struct pam_conv and the callback it points to must outlive the handle
        self._conv_fn = conv_fn
        self._messages = messages
        self._owner = os.getpid()
        self._last = lib.consts.success
        self._passed_account = False
        self._cred = False
        self._opened = False
        self.service = service
        self.user = user

    # -- start ---------------------------------------------------------------------------

    @classmethod
    def start(cls, service: str, user: str, *, tty: Optional[str] = None,
              ruser: Optional[str] = None, rhost: Optional[str] = None,
              lib: Optional[Libpam] = None) -> PamSession:
        """pam_start for USER under SERVICE, then set PAM_TTY, PAM_RUSER and PAM_RHOST if given.

        TTY is the terminal's path (/dev/pts/N) for PTY sessions; None leaves it unset.
        """
        import ctypes

        check_service(service)
        c_service = _c_string("service", service)
        c_user = _c_string("user", user)
        items = [(what, _c_string(what, value)) for what, value in
                 (("tty", tty), ("ruser", ruser), ("rhost", rhost)) if value is not None]
        if lib is None:
            lib = load()
        messages: list[Message] = []
        conv_fn = lib.conv_type(conversation(lib, messages))
        conv = lib.conv_struct(conv_fn, None)
        handle = ctypes.c_void_p()
        rc = lib.pam.pam_start(c_service, c_user, ctypes.byref(conv), ctypes.byref(handle))
        if rc != lib.consts.success:
            if handle.value:
                lib.pam.pam_end(handle, rc)
            raise PamFailed(f"pam_start({service}, {user}) failed: {_strerror(lib, None, rc)}")
        session = cls(lib, handle, conv=conv, conv_fn=conv_fn, messages=messages,
                      service=service, user=user)
        codes = {"tty": lib.consts.tty, "ruser": lib.consts.ruser, "rhost": lib.consts.rhost}
        for what, value in items:
            rc = lib.pam.pam_set_item(handle, codes[what], value)
            if rc != lib.consts.success:
                session._last = rc
                text = session._strerror(rc)
                session.close()
                raise PamFailed(f"pam_set_item({what}) failed: {text}")
        return session

    # -- the stages ----------------------------------------------------------------------

    def acct_mgmt(self) -> None:
        """The account stage. A refusal (expired, locked, nologin, ...) raises AccountRefused."""
        handle = self._live("pam_acct_mgmt")
        rc = self._lib.pam.pam_acct_mgmt(handle, 0)
        self._last = rc
        if rc == self._lib.consts.success:
            self._passed_account = True
            return
        text = self._strerror(rc)
        said = "; ".join(m.text for m in self._messages if m.style != "prompt" and m.text)
        if rc in self._lib.consts.refusals():
            raise AccountRefused(f"{self.user}: refused by PAM ({self.service}): {text}",
                                 hint=said or None)
        raise PamFailed(f"pam_acct_mgmt for {self.user} failed: {text}", hint=said or None)

    def establish_credentials(self) -> None:
        """pam_setcred(PAM_ESTABLISH_CRED). Call after the user's groups are set (see above)."""
        handle = self._live("pam_setcred")
        if not self._passed_account:
            raise PamFailed("pam_setcred before the account stage passed")
        rc = self._lib.pam.pam_setcred(handle, self._lib.consts.establish_cred)
        self._last = rc
        if rc != self._lib.consts.success:
            raise PamFailed(f"pam_setcred(ESTABLISH) for {self.user} failed: "
                            f"{self._strerror(rc)}")
        self._cred = True

    def open_session(self) -> None:
        """pam_open_session (loginuid, limits, environment, logind session...)."""
        handle = self._live("pam_open_session")
        if not self._cred:
            raise PamFailed("pam_open_session before credentials were established")
        if self._opened:
            raise PamFailed("pam_open_session called twice on one handle")
        rc = self._lib.pam.pam_open_session(handle, 0)
        self._last = rc
        if rc != self._lib.consts.success:
            raise PamFailed(f"pam_open_session for {self.user} failed: {self._strerror(rc)}")
        self._opened = True

    def environment(self) -> dict[str, str]:
        """The PAM environment (pam_env, pam_systemd...), NAME -> value.

        Values are decoded with surrogateescape so that they encode back to the exact bytes.
        """
        import ctypes

        handle = self._live("pam_getenvlist")
        array = self._lib.pam.pam_getenvlist(handle)
        if not array:
            raise PamFailed("pam_getenvlist failed (out of memory)")
        env: dict[str, str] = {}
        try:
            i = 0
            while array[i] is not None:
                name, sep, value = ctypes.string_at(array[i]).partition(b"=")
                if sep and name:
                    env[name.decode("utf-8", "surrogateescape")] = value.decode(
                        "utf-8", "surrogateescape")
                i += 1
        finally:
            # pam_getenvlist hands over a malloc'd copy: every string, then the array itself.
            i = 0
            while array[i] is not None:
                self._lib.libc.free(array[i])
                i += 1
            self._lib.libc.free(ctypes.cast(array, ctypes.c_void_p))
        return env

    @property
    def messages(self) -> tuple[Message, ...]:
        """What modules said through the conversation so far."""
        return tuple(self._messages)

    @property
    def session_open(self) -> bool:
        return self._opened

    @property
    def closed(self) -> bool:
        return self._handle is None

    # -- the end -------------------------------------------------------------------------

    def close(self) -> None:
        """pam_close_session (if opened), pam_setcred(PAM_DELETE_CRED) (if established), pam_end.

        Idempotent. In a forked copy of the owner (a child that has not exec'd yet) it does
        nothing: only the process that started the handle ends it. Every step runs even if an
        earlier one fails; failures are raised together at the end, after pam_end.
        """
        if self._handle is None or os.getpid() != self._owner:
            return
        handle, lib, problems = self._handle, self._lib, []
        status = self._last
        if self._opened:
            self._opened = False
            rc = lib.pam.pam_close_session(handle, 0)
            if rc != lib.consts.success:
                status = rc
                problems.append(f"pam_close_session: {self._strerror(rc)}")
        if self._cred:
            self._cred = False
            rc = lib.pam.pam_setcred(handle, lib.consts.delete_cred)
            if rc != lib.consts.success:
                status = rc
                problems.append(f"pam_setcred(DELETE): {self._strerror(rc)}")
        self._handle = None
        rc = lib.pam.pam_end(handle, status)
        if rc != lib.consts.success:
            problems.append(f"pam_end: {_strerror(lib, None, rc)}")
        if problems:
            raise PamFailed(f"closing the PAM session of {self.user}: " + "; ".join(problems))

    def __enter__(self) -> PamSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------

    def _live(self, what: str) -> Any:
        if self._handle is None:
            raise PamFailed(f"{what}: the PAM handle is already closed")
        if os.getpid() != self._owner:
            raise PamFailed(f"{what}: the PAM handle belongs to process {self._owner}")
        return self._handle

    def _strerror(self, rc: int) -> str:
        return _strerror(self._lib, self._handle, rc)


def _strerror(lib: Libpam, handle: Any, rc: int) -> str:
    text = lib.pam.pam_strerror(handle, rc)
    return text.decode("utf-8", "replace") if text else f"PAM error {rc}"


def conversation(lib: Libpam, messages: list[Message]) -> Callable[..., int]:
    """A conversation that shows nothing and answers nothing.

    Prompts (echo on/off, and Linux-PAM's radio and binary prompts) get PAM_CONV_ERR: there is
    nobody to answer them and no authentication stage. Error and info messages are kept and
    acknowledged with an array of empty responses, allocated with the C allocator because
    libpam frees it.
    """
    import ctypes

    c = lib.consts
    kinds = {c.error_msg: "error", c.text_info: "info"}

    def conv(count: int, msgs: Any, resp: Any, _appdata: Any) -> int:
        try:
            resp[0] = ctypes.POINTER(lib.response_struct)()
            if count <= 0 or count > _MAX_MESSAGES:
                return c.conv_err
            prompted = False
            for i in range(count):
                msg = msgs[i].contents
                text = (msg.msg or b"").decode("utf-8", "replace").strip()
                kind = kinds.get(msg.msg_style)
                if kind is None:
                    prompted = True
                    kind = "prompt"
                messages.append(Message(kind, text))
            if prompted:
                return c.conv_err
            block = lib.libc.calloc(count, ctypes.sizeof(lib.response_struct))
            if not block:
                return c.buf_err
            resp[0] = ctypes.cast(block, ctypes.POINTER(lib.response_struct))
            return c.success
        except BaseException:  # an exception must never cross into C
            return c.conv_err

    return conv


@dataclass(frozen=True)
class Login:
    """A PAM session opened for a user: the live handle, the child's groups, the PAM env, and
    what the session stage set in the calling process's limits, umask and nice value (for the
    child to apply before exec; the calling process has its own back)."""

    pam: PamSession
    groups: tuple[int, ...]
    environment: dict[str, str]
    limits: ProcessLimits
    unrestored: tuple[str, ...] = ()  # what of the calling process's own could not be put back


def login(service: str, user: str, gid: int, *, tty: Optional[str] = None,
          ruser: Optional[str] = None, rhost: Optional[str] = None,
          lib: Optional[Libpam] = None,
          groups: Optional[Sequence[int]] = None,
          setgroups: Callable[[Sequence[int]], None] = os.setgroups,
          getgroups: Callable[[], list[int]] = os.getgroups) -> Login:
    """Steps 1-6 of the module's call order, in the calling process: the PAM process of
    `open_login` (or a test's own process).

    GROUPS: the account's group list when the caller has it already (else getgrouplist).
    On any failure the handle is closed before the error is raised. The caller forks the child
    with `groups` and `limits`, merges `environment`, and calls `pam.close()` when the session
    ends. The calling process's limits, umask and nice value are its own again on return, and
    after a failure, as far as it may set them (`unrestored` says what stays as PAM set it: a
    lowered hard limit, without CAP_SYS_RESOURCE).
    """
    from agent import proclimits

    own = proclimits.capture()
    try:
        pam = PamSession.start(service, user, tty=tty, ruser=ruser, rhost=rhost, lib=lib)
        try:
            pam.acct_mgmt()
            try:
                setgroups(list(groups) if groups is not None else os.getgrouplist(user, gid))
            except OSError as exc:
                raise PamFailed(f"setting the groups of {user} before pam_setcred: "
                                f"{exc.strerror}") from exc
            pam.establish_credentials()
            pam.open_session()
            session = proclimits.capture()
            unrestored = proclimits.restore(own)
            with_credentials = tuple(getgroups())
            env = pam.environment()
        except BaseException:
            try:
                pam.close()
            except PamFailed:
                pass  # the first failure is the one to report
            raise
    except BaseException:
        proclimits.restore(own)
        raise
    return Login(pam, with_credentials, env, proclimits.changes(own, session), unrestored)


# --- the PAM process -----------------------------------------------------------------------------

REPORT_MAX = 1 << 20  # the largest report the PAM process may send (groups, environment...)
CLOSE_TIMEOUT = 10.0  # seconds the PAM process may take to end the session once told to
OPEN_TIMEOUT = 300.0  # seconds the stages may take to open it (agent.client's start timeout)
CANCEL_CHECK = 0.1  # seconds between two calls of open_login's CANCELLED while PAM works
_CLOSE = b"c"
_GO = b"g"
_UNSET_LOGINUID = 4294967295  # (uid_t)-1: no login uid


@dataclass(frozen=True)
class Opened:
    """A PAM session opened in its own process (`open_login`): what the session stage set for
    the session, for the caller to give the session's child, and the process that holds the
    handle until `close()`."""

    pid: int  # the PAM process, a child of the caller
    groups: tuple[int, ...]
    environment: dict[str, str]
    limits: ProcessLimits
    loginuid: Optional[int]  # set by the session stage (pam_loginuid), else None
    cgroup: Optional[str]  # the PAM process's cgroup v2 path once it moved there (pam_systemd)
    messages: tuple[Message, ...]
    process: PamProcess

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Tell the PAM process to end the session (pam_close_session, pam_setcred(DELETE),
        pam_end) and reap it; killed after TIMEOUT seconds. Raises PamFailed when it did not end
        the session cleanly. Does nothing in a forked copy of the owner; safe to call twice."""
        self.process.close(timeout)


class PamProcess:
    """The running PAM process, as its parent sees it: its pid and the pipe it waits on."""

    __slots__ = ("_control", "_ended", "_owner", "pid")

    def __init__(self, pid: int, control: int) -> None:
        self.pid = pid
        self._control: Optional[int] = control  # the write end; None once closed
        self._owner = os.getpid()
        self._ended: Optional[int] = None  # its wait status, when it ended before told to

    def ended(self, status: int) -> None:
        """The owner reaped the process (wait status STATUS) before telling it to close: it was
        killed or crashed, and never ran pam_close_session. `close()` raises PamFailed then."""
        if self._control is not None and self._ended is None:
            self._ended = status

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        if self._control is None or os.getpid() != self._owner:
            return
        control, self._control = self._control, None
        if self._ended is not None:
            os.close(control)
            raise PamFailed(f"the PAM process {self.pid} ended before the session did "
                            f"({describe_status(self._ended)}): pam_close_session did not run")
        try:
            os.write(control, _CLOSE)
        except OSError:
            pass  # it has ended already: the pipe's other end is closed
        os.close(control)
        _end_process(self.pid, timeout)


    def kill(self) -> None:
        """Kill the process (and what its modules started) at once and reap it (it has not
        opened a session to close)."""
        if self._control is None or os.getpid() != self._owner:
            return
        control, self._control = self._control, None
        os.close(control)
        _kill_tree(self.pid)
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass


class _Gone(Exception):
    """The PAM process is no longer this process's child (reaped before)."""


def _kill_tree(pid: int) -> None:
    """SIGKILL the PAM process PID and every process below it: what its modules started (a
    pam_exec program runs as root, in a session of its own) must not outlive it. Each is
    stopped before its children are looked up, so none reaps a child whose id is then taken
    for another process's; PID must be an unreaped child of the caller."""
    import signal

    found = [pid]
    for parent in found:  # grows as it goes: children, grandchildren, ...
        try:
            os.kill(parent, signal.SIGSTOP)
        except ProcessLookupError:
            continue
        found.extend(c for c in _children(parent) if c not in found)
    for each in found:
        try:
            os.kill(each, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _children(pid: int) -> list[int]:
    """The processes whose parent is PID (from /proc; none where there is no /proc)."""
    out: list[int] = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return out
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat.rpartition(b")")[2].split()
        if len(fields) > 1 and fields[1] == str(pid).encode():
            out.append(int(name))
    return out


def _end_process(pid: int, timeout: float) -> None:
    """Reap PID once it exits, woken by its exit (a pidfd, where there is one; else 10 ms
    polls); killed, with what it started, after TIMEOUT seconds."""
    import select
    import time

    deadline = time.monotonic() + timeout
    exited = _exit_watch(pid)
    try:
        while True:
            try:
                got, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                raise _Gone from None
            if got == pid:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                _kill_tree(pid)
                os.waitpid(pid, 0)
                raise PamFailed(f"the PAM process {pid} did not end the session within "
                                f"{timeout:g} s: killed")
            if exited is None:
                time.sleep(min(0.01, left))
            else:
                select.select([exited], [], [], left)
    except _Gone:
        raise PamFailed(f"the PAM process {pid} had ended before it was told to close the "
                        "session: pam_close_session did not run") from None
    finally:
        if exited is not None:
            os.close(exited)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise PamFailed(f"the PAM process {pid} ended the session with exit status {code}")


def _exit_watch(pid: int) -> Optional[int]:
    """A descriptor that becomes readable when the child PID exits (a pidfd), or None."""
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return None
    try:
        fd: int = opener(pid)
    except OSError:  # reaped already (the caller's waitpid says so), or no pidfd here
        return None
    return fd


def describe_status(status: int) -> str:
    """A wait status, in words."""
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


def open_login(service: str, user: str, gid: int, *, tty: Optional[str] = None,
               ruser: Optional[str] = None, rhost: Optional[str] = None,
               groups: Optional[Sequence[int]] = None, timeout: float = OPEN_TIMEOUT,
               wake: int = -1, cancelled: Optional[Callable[[], None]] = None,
               lib: Optional[Libpam] = None,
               before: Optional[Callable[[], None]] = None,
               ahead: Optional[LoginAhead] = None) -> Opened:
    """`login()` in a process of its own, forked here: the caller's limits, umask, nice value,
    groups, loginuid and cgroup stay as they are, whatever the session stage does. The process
    keeps the handle until `Opened.close()` (or until the caller dies: the pipe it waits on
    closes), then ends the session and exits. A refusal or failure raises the same error
    `login()` would, after that process has ended. Call from a single-threaded process.

    A module may hang (a pam_exec script, a directory that does not answer): the wait for the
    report is bounded. After TIMEOUT seconds the PAM process is killed and PamFailed raised;
    CANCELLED(), called when WAKE (a descriptor, -1: none) is readable and every CANCEL_CHECK
    seconds, empties WAKE and raises to give up (the session was terminated): the PAM process
    is killed and that error propagates. Either way nothing of the session runs.

    LIB: libpam as `prewarm` loaded it in an ancestor (None: the PAM process loads it).
    BEFORE(), when given, runs here while the PAM process prepares itself (its descriptors,
    signals); the PAM process calls nothing of libpam until BEFORE has returned. If BEFORE
    raises, the PAM process is killed (PAM never ran) and the error propagates.

    AHEAD (prefork_login()), if given, is the PAM process: sent what to open instead of a fork
    being made now (open_login takes it over; one that is gone or stopped is replaced by a
    fork). It uses the LIB it was forked with."""
    import json

    taken = _take(ahead) if ahead is not None else None
    if taken is not None:
        pid, report_r, control_w = taken
        word = _params(service, user, gid, tty=tty, ruser=ruser, rhost=rhost, groups=groups)
    else:
        pid, report_r, control_w = _fork_login(
            lib, gated=before is not None,
            params=(service, user, gid, tty, ruser, rhost, groups))
        word = _GO
    process = PamProcess(pid, control_w)
    unsent = False
    if before is not None or taken is not None:
        try:
            if before is not None:
                before()
        except BaseException:
            process.kill()  # waiting for the word to begin: PAM has not run
            os.close(report_r)
            raise
        try:
            _write_all(control_w, word)
        except OSError:
            unsent = True  # it has ended: no report comes, which is reported below
    try:
        try:
            data = _read_report(report_r, timeout, wake, cancelled)
        except BaseException:
            process.kill()  # still in the stages: there is no session it could end yet
            raise
        finally:
            os.close(report_r)
        if not data and taken is not None and (unsent or _unread(control_w) > 0):
            # Forked ahead, it ended before it had what to open (killed as the start took
            # it): PAM never began in it. A PAM process of this start's own takes its place.
            process.kill()
            return open_login(service, user, gid, tty=tty, ruser=ruser, rhost=rhost,
                              groups=groups, timeout=timeout, wake=wake, cancelled=cancelled,
                              lib=lib)
        report = json.loads(data.decode("utf-8")) if data else None
        if not isinstance(report, dict):
            raise ValueError("no report" if report is None else "not an object")
        if "error" in report:
            raise _error(report)
        opened = _opened(report, process)
    except BaseException as exc:
        try:
            process.close()
        except PamFailed as problem:  # the first failure is the one to report
            _warn(f"after a failed PAM login of {user}: {problem}")
        if isinstance(exc, (ValueError, TypeError, KeyError)):
            raise PamFailed(f"the PAM process for {user} sent no usable report "
                            f"({type(exc).__name__}: {exc})") from exc
        raise
    return opened


def _fork_login(lib: Optional[Libpam], *, gated: bool, params: Optional[tuple[Any, ...]]
                ) -> tuple[int, int, int]:
    """Fork the PAM process: (pid, the report's read end, the control pipe's write end).
    PARAMS None: forked ahead, it waits for them on the control pipe."""
    report_r, report_w = os.pipe()
    try:
        control_r, control_w = os.pipe()
    except OSError:
        os.close(report_r)
        os.close(report_w)
        raise
    try:
        pid = os.fork()
    except OSError as exc:
        for fd in (report_r, report_w, control_r, control_w):
            os.close(fd)
        raise PamFailed(f"could not start the PAM process: {exc.strerror}") from exc
    if pid == 0:
        _pam_process(report_w, control_r, params, lib=lib, gated=gated)
    os.close(report_w)
    os.close(control_r)
    return pid, report_r, control_w


class LoginAhead:
    """A PAM process forked ahead of its login (prefork_login()): it has set itself up (its
    descriptors, signals, its loginuid and cgroup read) and calls nothing of libpam until it is
    sent what to open. Used once, by open_login(); release() lets an unused one go."""

    __slots__ = ("_fds", "pid")

    def __init__(self, pid: int, report_r: int, control_w: int) -> None:
        self.pid = pid
        self._fds: Optional[tuple[int, int]] = (report_r, control_w)

    def take(self) -> Optional[tuple[int, int, int]]:
        fds, self._fds = self._fds, None
        return None if fds is None else (self.pid, *fds)

    def release(self) -> None:
        """Close its pipes (it exits at their end: PAM never began), and reap it. Idempotent."""
        fds, self._fds = self._fds, None
        if fds is not None:
            from agent.spawn import kill_and_reap

            for fd in fds:
                os.close(fd)
            kill_and_reap(self.pid)


def prefork_login(lib: Optional[Libpam]) -> LoginAhead:
    """Fork the PAM process of a later open_login() now, before its account is known."""
    return LoginAhead(*_fork_login(lib, gated=True, params=None))


def _take(ahead: LoginAhead) -> Optional[tuple[int, int, int]]:
    """AHEAD's process and pipes, if it still waits (agent.spawn.still_waiting), else None."""
    from agent.spawn import still_waiting

    taken = ahead.take()
    if taken is None:
        return None
    pid, report_r, control_w = taken
    if still_waiting(pid):
        return taken
    os.close(report_r)
    os.close(control_w)
    return None


def _unread(fd: int) -> int:
    """How many bytes written to the pipe FD (either end) are still unread (-1: unknown)."""
    import array
    import fcntl
    import termios

    count = array.array("i", [0])
    try:
        fcntl.ioctl(fd, termios.FIONREAD, count)
    except OSError:
        return -1
    return count[0]


def _params(service: str, user: str, gid: int, *, tty: Optional[str], ruser: Optional[str],
            rhost: Optional[str], groups: Optional[Sequence[int]]) -> bytes:
    """What a PAM process forked ahead is to open, one protocol frame (its word to begin)."""
    from agent import protocol

    return protocol.encode({"open": [service, user, gid, tty, ruser, rhost,
                                     None if groups is None else list(groups)]})


def _read_params(fd: int) -> Optional[tuple[Any, ...]]:
    """In a PAM process forked ahead: what to open, or None at the pipe's end (let go)."""
    from agent import protocol

    frames = protocol.FrameDecoder()
    msg = frames.pop()
    while msg is None:
        chunk = os.read(fd, 65536)
        if not chunk:
            return None
        frames.push(chunk)
        msg = frames.pop()
    if frames.pending:  # nothing follows the one frame
        return None
    service, user, gid, tty, ruser, rhost, groups = msg["open"]
    return service, user, gid, tty, ruser, rhost, groups


def _read_report(fd: int, timeout: float, wake: int,
                 cancelled: Optional[Callable[[], None]]) -> bytes:
    import select
    import time

    deadline = time.monotonic() + timeout
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    if wake != -1:
        poller.register(wake, select.POLLIN)
    chunks: list[bytes] = []
    size = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise PamFailed(f"PAM did not open the session within {timeout:g} s: a module hangs",
                            hint="check the session modules of the PAM service (pam_exec "
                            "scripts, directory lookups)")
        ready = {got for got, _ in poller.poll(max(1, int(min(left, CANCEL_CHECK) * 1000)))}
        if fd not in ready:
            # Only while nothing is reported: a session PAM opened is closed, never killed.
            if cancelled is not None:
                cancelled()
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > REPORT_MAX:
            raise PamFailed(f"the PAM process's report is larger than {REPORT_MAX} bytes")
        chunks.append(chunk)


def _error(report: dict[str, Any]) -> AgentError:
    """The error the PAM process reported, as the class its reason code names."""
    kinds: dict[str, type[AgentError]] = {AccountRefused.reason: AccountRefused,
                                          PamFailed.reason: PamFailed}
    message, hint = report.get("message"), report.get("hint")
    if not isinstance(message, str):
        raise ValueError("an error without a message")
    return kinds.get(str(report["error"]), PamFailed)(
        message, hint=hint if isinstance(hint, str) else None)


def _opened(report: dict[str, Any], process: PamProcess) -> Opened:
    from agent.proclimits import ProcessLimits

    def ints(value: Any) -> tuple[int, ...]:
        if not isinstance(value, list) or not all(type(x) is int for x in value):
            raise ValueError("not a list of integers")
        return tuple(value)

    def optional_int(value: Any) -> Optional[int]:
        if value is not None and type(value) is not int:
            raise ValueError("not an integer")
        return value

    env = report["environment"]
    if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ValueError("the environment is not a map of strings")
    lim = report["limits"]
    rlimits = []
    for row in lim["rlimits"]:
        r, soft, hard = ints(row)
        rlimits.append((r, soft, hard))
    limits = ProcessLimits(tuple(rlimits), optional_int(lim["umask"]),
                           optional_int(lim["nice"]))
    cg = report["cgroup"]
    if cg is not None and not isinstance(cg, str):
        raise ValueError("the cgroup is not a string")
    messages = []
    for row in report["messages"]:
        style, text = row
        if not isinstance(style, str) or not isinstance(text, str):
            raise ValueError("a message is not two strings")
        messages.append(Message(style, text))
    return Opened(process.pid, ints(report["groups"]), dict(env), limits,
                  optional_int(report["loginuid"]), cg, tuple(messages), process)


def _read_loginuid() -> Optional[int]:
    try:
        with open("/proc/self/loginuid") as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return None


def _own_cgroup() -> Optional[str]:
    from agent import cgroup

    return cgroup.own_path(cgroup.V2)


def _pam_process(report_w: int, control_r: int, params: Optional[tuple[Any, ...]], *,
                 lib: Optional[Libpam] = None, gated: bool = False) -> NoReturn:
    """The forked PAM process: (GATED: wait for the word to begin, which is PARAMS when they
    are None, as for a process forked ahead; EOF ends it) open the session of PARAMS (service,
    user, gid, tty, ruser, rhost, groups), report, wait for the word (or EOF), close it, exit.
    Holds none of its parent's descriptors but stdin, stdout, stderr and its pipes."""
    code = 2
    try:
        import gc
        import json
        import signal

        gc.disable()  # no finalizer may close a descriptor number libpam reuses
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # pam_exec and the like wait for theirs
        _close_all_but((0, 1, 2, report_w, control_r))
        loginuid, cgroup = _read_loginuid(), _own_cgroup()
        if params is None:
            params = _read_params(control_r)
            if params is None:
                os._exit(0)  # let go before PAM began: there is nothing to end
            _name_as_parent()
        elif gated and os.read(control_r, 1) != _GO:
            os._exit(0)  # given up before PAM began: there is nothing to end
        service, user, gid, tty, ruser, rhost, groups = params
        try:
            got = login(service, user, gid, tty=tty, ruser=ruser, rhost=rhost, groups=groups,
                        lib=lib)
        except AgentError as exc:
            _write_all(report_w, json.dumps({"error": exc.reason, "message": exc.message,
                                             "hint": exc.hint}).encode())
            os._exit(0)
        code = 1
        now_uid, now_cgroup = _read_loginuid(), _own_cgroup()
        report = {
            "groups": list(got.groups), "environment": got.environment,
            "limits": {"rlimits": [list(row) for row in got.limits.rlimits],
                       "umask": got.limits.umask, "nice": got.limits.nice},
            "loginuid": (now_uid if now_uid not in (loginuid, _UNSET_LOGINUID)
                         else None),
            "cgroup": now_cgroup if now_cgroup != cgroup else None,
            "messages": [[m.style, m.text] for m in got.pam.messages],
        }
        try:
            _write_all(report_w, json.dumps(report).encode())
            os.close(report_w)
            while True:
                try:
                    os.read(control_r, 1)  # the word to close, or EOF: the caller is gone
                    break
                except InterruptedError:  # pragma: no cover - retried by Python (PEP 475)
                    continue
        except OSError:
            pass
        finally:
            try:
                got.pam.close()
                code = 0
            except PamFailed as exc:
                os.write(2, f"runas-agent PAM process {os.getpid()}: {exc}\n".encode())
    except BaseException as exc:  # nothing may escape the forked process
        try:
            os.write(2, f"runas-agent PAM process {os.getpid()}: {exc!r}\n".encode())
        except BaseException:  # noqa: S110 - it is about to _exit either way
            pass
    finally:
        os._exit(code)


def _name_as_parent() -> None:
    """In a PAM process forked ahead, once taken: bear its supervisor's name, as one forked at
    the start does, not the idle spare's it was forked with (Linux; elsewhere nothing)."""
    import sys

    from agent import procname

    name = procname.name_of(os.getppid(), sys.platform)
    if name is not None:
        procname.set_name(name, sys.platform)


def _warn(message: str) -> None:
    try:
        os.write(2, f"runas-agent {os.getpid()}: {message}\n".encode())
    except OSError:
        pass


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def _close_all_but(keep: Sequence[int]) -> None:
    try:
        fds = sorted(int(name) for name in os.listdir("/proc/self/fd"))
    except OSError:
        fds = list(range(os.sysconf("SC_OPEN_MAX")))
    for fd in fds:
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass
