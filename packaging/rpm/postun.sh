# shellcheck shell=sh
# runas-agent %postun: $1 is 0 when the package is erased, 1 or more after an upgrade.
# Erasing removes state and runtime files. As Fedora's guidelines ask, the runas-agent group is
# kept (files elsewhere may still carry its gid), and so is /var/log/runas-agent: the audit log
# is a record, not state. A modified config.yaml is saved as config.yaml.rpmsave by rpm.
if [ "$1" -eq 0 ]; then
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload >/dev/null 2>&1 || :
    fi
    rm -rf /var/lib/runas-agent /run/runas-agent
fi
exit 0
