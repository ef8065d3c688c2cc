# shellcheck shell=sh
# runas-agent %post: $1 is 1 on a first install, 2 or more on an upgrade.
install -d -m 0750 /var/log/runas-agent
install -d -m 0700 /var/lib/runas-agent
# Byte code for the system python3, removed again by %preun.
/usr/bin/python3 -I -m compileall -q /usr/lib/runas-agent >/dev/null
if [ "$1" -eq 1 ]; then
    # Enabled on a first install only: an admin's later `systemctl disable` survives upgrades.
    if command -v systemctl >/dev/null 2>&1; then
        systemctl --no-reload enable runas-agent.socket >/dev/null 2>&1 || :
    fi
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload >/dev/null 2>&1 || :
        systemctl start runas-agent.socket >/dev/null 2>&1 || :
    fi
elif [ -d /run/systemd/system ]; then
    # Upgrade: a running daemon picks up the new code. KillMode=process: live sessions keep
    # running under their own supervisors, and the socket stays open meanwhile.
    systemctl daemon-reload >/dev/null 2>&1 || :
    systemctl try-restart runas-agent.service >/dev/null 2>&1 || :
fi
exit 0
