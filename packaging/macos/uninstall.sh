#!/bin/sh
# Remove runas-agent from this Mac (installed as /usr/local/lib/runas-agent/uninstall.sh).
# Usage: sudo /usr/local/lib/runas-agent/uninstall.sh [--purge]
#   --purge  also remove /etc/runas-agent, /var/log/runas-agent and the runas-agent group
#            (when no account belongs to it)
# Live sessions are not ended. ssm-user and /etc/sudoers.d/ssm-agent-users are left alone.
set -eu

LABEL=org.runas-agent.agent
GROUP=runas-agent
purge=no
case "${1:-}" in
    --purge) purge=yes ;;
    '') ;;
    *) echo "usage: $0 [--purge]" >&2; exit 2 ;;
esac
if [ "$(/usr/bin/id -u)" -ne 0 ]; then
    echo "uninstall.sh: run it as root (sudo)" >&2
    exit 1
fi

/bin/launchctl bootout "system/$LABEL" >/dev/null 2>&1 || true
/bin/rm -f "/Library/LaunchDaemons/$LABEL.plist" /usr/local/bin/runas-agent \
    /usr/local/share/man/man8/runas-agent.8
/bin/rm -rf /usr/local/share/runas-agent /var/run/runas-agent
/usr/sbin/pkgutil --forget org.runas-agent.pkg >/dev/null 2>&1 || true

if [ "$purge" = yes ]; then
    /bin/rm -rf /etc/runas-agent /var/log/runas-agent
    members=$(/usr/bin/dscl . -read "/Groups/$GROUP" GroupMembership 2>/dev/null || true)
    if [ -z "$members" ]; then
        /usr/sbin/dseditgroup -o delete "$GROUP" >/dev/null 2>&1 || true
    else
        echo "uninstall.sh: group $GROUP kept: it has members" >&2
    fi
fi
# Last, since this script lives there.
/bin/rm -rf /usr/local/lib/runas-agent
