"""The session's environment, built from scratch (nothing of the daemon's own environment).

Identity variables come from the user database (HOME, USER, LOGNAME, SHELL), PATH from
login.defs (ENV_PATH) or a sane default, TERM from the request when it carries a terminal, and
a few locale variables from the client, like sshd's `AcceptEnv LANG LC_*`. `extra` (for instance
the PAM environment) is merged last, under the same validation.
"""

from __future__ import annotations

import re
import sys
from types import MappingProxyType

from agent.errors import BadRequest

TYPE_CHECKING = False  # typing is not imported at run time: start-up cost matters on the CLI
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Optional

    from agent.accounts import Account

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
# macOS has no login.defs; sshd there gives sessions /usr/bin:/bin:/usr/sbin:/sbin.
DARWIN_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"

#: What a client may set (anything else it sends is dropped without a word, like sshd's
#: AcceptEnv): the locale (LANG, LANGUAGE, LC_ALL and each LC_* category glibc knows) and TZ.
ALLOWED_CLIENT_ENV = frozenset(
    {
        "LANG",
        "LANGUAGE",
        "LC_ALL",
        "LC_ADDRESS",
        "LC_COLLATE",
        "LC_CTYPE",
        "LC_IDENTIFICATION",
        "LC_MEASUREMENT",
        "LC_MESSAGES",
        "LC_MONETARY",
        "LC_NAME",
        "LC_NUMERIC",
        "LC_PAPER",
        "LC_TELEPHONE",
        "LC_TIME",
        "TZ",
    }
)

#: Set from the user database; `extra` cannot change them.
IDENTITY = ("HOME", "USER", "LOGNAME", "SHELL")

#: Never in a session's environment, whoever asks (dynamic loaders, the Python runtime).
FORBIDDEN_PREFIXES = ("LD_", "DYLD_", "PYTHON")

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A terminfo name: no '/', no spaces, short.
_TERM_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
_LOGIN_DEFS_MAX = 1 << 20
_NO_EXTRA: Mapping[str, str] = MappingProxyType({})


def build_env(
    account: Account,
    *,
    term: Optional[str],
    client_env: Mapping[str, str],
    login_defs: str = "/etc/login.defs",
    extra: Mapping[str, str] = _NO_EXTRA,
    sys_platform: str = sys.platform,
) -> dict[str, str]:
    """The complete environment of ACCOUNT's session.

    Raises BadRequest, naming the variable, when a name is not [A-Za-z_][A-Za-z0-9_]* (so holds
    no '=' or NUL) or a value holds a NUL, in `client_env` or `extra`, or when TERM is not a
    terminal name. Client variables not in ALLOWED_CLIENT_ENV are dropped; from `extra`, names
    starting with a FORBIDDEN_PREFIXES entry are dropped and IDENTITY names are kept as built.
    """
    client = _validated(client_env, "client environment")
    more = _validated(extra, "extra environment")
    env = {
        "HOME": account.home,
        "USER": account.name,
        "LOGNAME": account.name,
        "SHELL": account.shell,
        "PATH": env_path(login_defs,
                         default=DARWIN_PATH if sys_platform == "darwin" else DEFAULT_PATH),
    }
    for name, value in env.items():
        _check_value(name, value, "user database")
    if term is not None:
        if not isinstance(term, str) or not _TERM_RE.fullmatch(term):
            raise BadRequest(f"TERM {term!r} is not a terminal name",
                             hint="letters, digits, '.', '_', '+', '-'; at most 64")
        env["TERM"] = term
    for name in sorted(client):
        if name in ALLOWED_CLIENT_ENV:
            env[name] = client[name]
    for name, value in more.items():
        if name in IDENTITY or forbidden(name):
            continue
        env[name] = value
    return env


def forbidden(name: str) -> bool:
    """True for names that never enter a session's environment."""
    return name.upper().startswith(FORBIDDEN_PREFIXES)


def check_name(name: object, where: str = "environment") -> str:
    """NAME if it is a valid environment variable name, else BadRequest naming it."""
    if not isinstance(name, str):
        raise BadRequest(f"{where}: variable name {name!r} is not a string")
    if "=" in name or "\0" in name:
        raise BadRequest(f"{where}: variable name {name!r} contains '=' or NUL")
    if not _NAME_RE.fullmatch(name):
        raise BadRequest(f"{where}: variable name {name!r} is not [A-Za-z_][A-Za-z0-9_]*")
    return name


def _check_value(name: str, value: object, where: str = "environment") -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{where}: value of {name} is not a string")
    if "\0" in value:
        raise BadRequest(f"{where}: value of {name} contains NUL")
    return value


def _validated(env: Mapping[str, str], where: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in env.items():
        out[check_name(name, where)] = _check_value(name, value, where)
    return out


_ENV_PATH = "ENV_PATH"


def env_path(login_defs: str = "/etc/login.defs", *, default: str = DEFAULT_PATH) -> str:
    """PATH from login.defs' ENV_PATH, or DEFAULT when it is absent or not a list of
    absolute directories (an empty or relative entry would search the working directory)."""
    try:
        with open(login_defs, "rb") as fh:
            text = fh.read(_LOGIN_DEFS_MAX).decode("utf-8", "replace")
    except OSError:
        return default
    value: Optional[str] = None
    # Only the lines that name the key are looked at (the file is mostly comments, and this
    # runs on every session's start). As shadow's getdef reads a line: lines end at a newline
    # only, the key is its first field after spaces and tabs, and ends at a space or a tab.
    at = text.find(_ENV_PATH)
    while at != -1:
        start = text.rfind("\n", 0, at) + 1
        end = text.find("\n", at)
        line_end = end if end != -1 else len(text)
        after = at + len(_ENV_PATH)
        if not text[start:at].strip(" \t") and text[after:after + 1] in (" ", "\t"):
            rest = text[after:line_end].strip()
            if rest:
                value = rest  # the last one wins, as in shadow's getdef
        at = text.find(_ENV_PATH, at + 1) if end == -1 else text.find(_ENV_PATH, end)
    if value is None:
        return default
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    if value.startswith("PATH="):
        value = value[len("PATH="):]
    entries = value.split(":")
    if not value or "\0" in value or not all(e.startswith("/") for e in entries):
        return default
    return value
