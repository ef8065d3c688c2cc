# shellcheck shell=sh
# runas-agent %pre: $1 is 1 on a first install, 2 or more on an upgrade.
# The session transport's group: members may connect to the daemon's socket.
if ! getent group runas-agent >/dev/null; then
    groupadd --system runas-agent
fi
exit 0
