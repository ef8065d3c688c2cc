import io
import json

from agent.logsetup import configure
from tests.support.isolation import REPO


def test_json_lines_for_services() -> None:
    import structlog

    buf = io.StringIO()
    configure("json", "info", buf)
    structlog.get_logger().info("session.started", user="alice", uid=1001)
    structlog.get_logger().debug("dropped.debug")
    lines = buf.getvalue().splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert rec["event"] == "session.started"
    assert rec["level"] == "info"
    assert rec["uid"] == 1001
    assert "ts" in rec


def test_key_value_for_a_terminal() -> None:
    import structlog

    buf = io.StringIO()
    configure("console", "debug", buf)
    structlog.get_logger().warning("config.reloaded", path="/etc/x")
    line = buf.getvalue().strip()
    assert "level='warning'" in line
    assert "event='config.reloaded'" in line
    assert "path='/etc/x'" in line


def test_a_broken_log_stream_does_not_raise() -> None:
    import structlog

    class Broken(io.StringIO):
        def write(self, s: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self) -> None:
            raise BrokenPipeError(32, "Broken pipe")

    configure("json", "info", Broken())
    structlog.get_logger().info("request.rejected", reason="bad_request")
    structlog.get_logger().exception("connection.failed")


def test_the_daemons_logging_loads_neither_asyncio_nor_ssl() -> None:
    """structlog's own import would bring in asyncio and OpenSSL; the daemon logs without
    them, and asyncio still works for whoever does ask for it."""
    import subprocess
    import sys

    code = """
import io, sys
from agent import logsetup
logsetup.keep_out_unused_imports()
out = io.StringIO()
logsetup.configure("json", "info", stream=out)
import structlog
structlog.get_logger().info("daemon.ready", pid=1)
assert '"event": "daemon.ready"' in out.getvalue() or '"event":"daemon.ready"' in out.getvalue()
print(sorted(m for m in ("asyncio.base_events", "ssl", "_ssl") if sys.modules.get(m)))
import asyncio
print(asyncio.run(asyncio.sleep(0, result="ran")))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["[]", "ran"]
