import io
import json

from agent.logsetup import configure


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
