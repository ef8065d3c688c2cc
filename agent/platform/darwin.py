"""macOS specifics. Directory queries go through the injected runner (mock-tested on Linux)."""

from __future__ import annotations

from dataclasses import dataclass

TYPE_CHECKING = False  # typing is not imported at run time: start-up cost matters on the CLI
if TYPE_CHECKING:
    from agent.runner import Runner

DSCL = "/usr/bin/dscl"


@dataclass(frozen=True)
class Darwin:
    runner: Runner
    name: str = "darwin"

    def account_source(self, name: str) -> str:
        """'local' when the local node (`dscl . -read /Users/NAME`) has it, else 'directory'."""
        done = self.runner([DSCL, ".", "-read", f"/Users/{name}", "UniqueID"], check=False)
        return "local" if done.returncode == 0 else "directory"
