# shellcheck shell=sh
# runas-agent %preun: $1 is 0 when the package is erased, 1 or more when this is the old
# version going away during an upgrade (then nothing is stopped).
if [ "$1" -eq 0 ]; then
    if [ -d /run/systemd/system ]; then
        # Stops the daemon only: KillMode=process leaves live sessions running.
        systemctl stop runas-agent.socket runas-agent.service >/dev/null 2>&1 || :
    fi
    if command -v systemctl >/dev/null 2>&1; then
        systemctl --no-reload disable runas-agent.socket runas-agent.service >/dev/null 2>&1 || :
    fi
    # Byte code written by %post (or by python3 itself): not in the package's file list.
    if [ -d /usr/lib/runas-agent ]; then
        find /usr/lib/runas-agent -depth -type d -name __pycache__ -exec rm -rf {} +
    fi
fi
exit 0
