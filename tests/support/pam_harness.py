"""A stand-in for the per-session supervisor, run as its own root process by the PAM tests.

    python -m tests.support.pam_harness '{"user": "alice", "command": "id -u", "pam": true,
                                          "pty": false, "host": "203.0.113.9"}'

It does what the supervisor does, in the same order: agent.pam.open_login() (in a process of its
own: start, account stage, groups, credentials, session, environment), then a child that becomes
the session leader (with the PTY as controlling terminal when asked), applies the limits and
the login uid the session stage set, drops
privileges (setgroups, setresgid, setresuid, verified) and execs `/bin/sh -c COMMAND`;
utmp/wtmp/lastlog records around a PTY session; at the end the PAM handle is closed. It prints
one JSON object: what was refused, or the child's output and status, plus what the test needs
to see of the supervisor itself (its loginuid, whether libpam was loaded, the PAM environment
and messages).
"""

import grp
import json
import os
import pwd
import signal
import sys
from typing import Any, Optional

from agent import pam as agent_pam
from agent import proclimits, utmp
from agent.errors import AgentError, LoginRecordFailed

PATH = "/usr/local/bin:/usr/bin:/bin"


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:  # EIO from a PTY master once the last slave holder is gone
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def _child(go_r: int, out_fd: int, tty_fd: Optional[int], *, pw: pwd.struct_passwd,
           groups: list[int], env: dict[str, str], command: str,
           limits: proclimits.ProcessLimits, loginuid: Optional[int]) -> None:
    """Runs in the forked child; never returns."""
    try:
        os.read(go_r, 1)  # wait until the supervisor has written the login record
        for sig in range(1, signal.NSIG):
            try:
                signal.signal(sig, signal.SIG_DFL)
            except (OSError, ValueError):
                pass
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        os.setsid()
        if tty_fd is not None:
            import fcntl
            import termios

            fcntl.ioctl(tty_fd, termios.TIOCSCTTY, 0)
            for fd in (0, 1, 2):
                os.dup2(tty_fd, fd)
        else:
            null = os.open("/dev/null", os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(out_fd, 1)
            os.dup2(out_fd, 2)
        proclimits.apply(limits)
        if loginuid is not None:
            with open("/proc/self/loginuid", "w") as fh:
                fh.write(str(loginuid))
        os.setgroups(groups)
        os.setresgid(pw.pw_gid, pw.pw_gid, pw.pw_gid)
        os.setresuid(pw.pw_uid, pw.pw_uid, pw.pw_uid)
        if os.getresuid() != (pw.pw_uid,) * 3 or os.getresgid() != (pw.pw_gid,) * 3:
            raise OSError("privileges not dropped")
        if sorted(set(os.getgroups())) != sorted(set(groups)):
            raise OSError("supplementary groups not set")
        try:
            os.setuid(0)
        except PermissionError:
            pass
        else:
            raise OSError("setuid(0) succeeded after the drop")
        os.closerange(3, 1024)
        try:
            os.chdir(pw.pw_dir)
        except OSError:
            os.chdir("/")
        os.execve("/bin/sh", ["sh", "-c", command], env)
    except BaseException as exc:
        try:
            os.write(2, f"harness child: {exc}\n".encode())
        finally:
            os._exit(127)


def run(spec: dict[str, Any]) -> dict[str, Any]:
    user = spec["user"]
    use_pam = bool(spec.get("pam", True))
    pw = pwd.getpwnam(user)
    out: dict[str, Any] = {"refused": None, "spawned": False, "record_problems": []}
    master = slave = None
    tty = None
    if spec.get("pty"):
        master, slave = os.openpty()
        tty = os.ttyname(slave)
        os.chown(tty, pw.pw_uid, grp.getgrnam("tty").gr_gid)
        os.chmod(tty, 0o620)
    login = None
    if use_pam:
        try:
            login = agent_pam.open_login(spec.get("service", agent_pam.DEFAULT_SERVICE), user,
                                         pw.pw_gid, tty=tty, ruser=spec.get("ruser"),
                                         rhost=spec.get("host"))
        except AgentError as exc:
            out["refused"] = {"reason": exc.reason, "message": exc.message, "hint": exc.hint}
            return _finish(out)
        groups = list(login.groups)
        pam_env = login.environment
        limits = login.limits
        loginuid = login.loginuid
        out["messages"] = [[m.style, m.text] for m in login.messages]
    else:
        groups = os.getgrouplist(user, pw.pw_gid)
        pam_env = {}
        limits = proclimits.ProcessLimits()
        loginuid = None
    out["pam_loginuid"] = loginuid
    out["pam_env"] = pam_env
    out["groups"] = groups
    env = {"HOME": pw.pw_dir, "USER": user, "LOGNAME": user, "SHELL": pw.pw_shell,
           "PATH": PATH}
    env.update({k: v for k, v in pam_env.items() if not k.startswith(("LD_", "PYTHON"))})

    rd, wr = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        _child(go_r, wr, slave, pw=pw, groups=groups, env=env, command=spec["command"],
               limits=limits, loginuid=loginuid)
    out["spawned"] = True
    os.close(wr)
    os.close(go_r)
    if slave is not None:
        os.close(slave)
    if tty is not None:
        try:
            utmp.login_record(pid, user, tty, spec.get("host", ""), uid=pw.pw_uid)
        except LoginRecordFailed as exc:
            out["record_problems"].append(exc.message)
    os.write(go_w, b"g")
    os.close(go_w)
    data = _read_all(master if master is not None else rd)
    os.close(rd)
    _, status = os.waitpid(pid, 0)
    out["status"] = os.waitstatus_to_exitcode(status)
    out["output"] = data.decode("utf-8", "replace")
    out["tty"] = tty
    if tty is not None:
        try:
            utmp.logout_record(pid, tty)
        except LoginRecordFailed as exc:
            out["record_problems"].append(exc.message)
    if master is not None:
        os.close(master)
    if login is not None:
        login.close()
        login.close()  # idempotent
    return _finish(out)


def _finish(out: dict[str, Any]) -> dict[str, Any]:
    with open("/proc/self/loginuid") as fh:
        out["supervisor_loginuid"] = fh.read().strip()
    with open("/proc/self/maps") as fh:
        out["libpam_loaded"] = "libpam.so" in fh.read()
    return out


def main() -> None:
    spec = json.loads(sys.argv[1])
    print(json.dumps(run(spec)))


if __name__ == "__main__":
    main()
