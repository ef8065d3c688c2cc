"""Linux specifics."""

from dataclasses import dataclass

from agent.errors import LookupFailed


@dataclass(frozen=True)
class Linux:
    passwd_path: str = "/etc/passwd"  # noqa: S105 - a path, not a password
    name: str = "linux"

    def account_source(self, name: str) -> str:
        """'local' when NAME is in /etc/passwd (the files backend), else 'directory'."""
        prefix = name.encode() + b":"
        try:
            with open(self.passwd_path, "rb") as fh:
                for line in fh:
                    if line.startswith(prefix):
                        return "local"
        except OSError as exc:
            raise LookupFailed(f"cannot read {self.passwd_path}: {exc.strerror}") from exc
        return "directory"
