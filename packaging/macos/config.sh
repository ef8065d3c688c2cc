#!/bin/sh
# Turn the Linux default config (stdin) into the macOS one (stdout): macOS has no /run, so the
# socket (created by launchd, see launchd/org.runas-agent.agent.plist) and the session records
# live in /var/run/runas-agent, a directory of root's own (/var/run itself is root:daemon 0775
# there). ssm-user's shell is zsh, the macOS default. Fails if the lines it rewrites are not
# there.
set -eu
sed -e 's|^#  path: /run/runas-agent/runas-agent.sock$|  path: /var/run/runas-agent/runas-agent.sock|' \
    -e 's|^#  state_dir: /run/runas-agent/sessions$|  state_dir: /var/run/runas-agent/sessions|' \
    -e 's|^#  shell: /bin/bash$|  shell: /bin/zsh|' \
  | awk '
      /^  path: \/var\/run\/runas-agent\/runas-agent.sock$/ { p = 1 }
      /^  state_dir: \/var\/run\/runas-agent\/sessions$/ { s = 1 }
      /^  shell: \/bin\/zsh$/ { z = 1 }
      { print }
      END {
        if (!(p && s)) { print "config.sh: socket.path or session.state_dir not found" > "/dev/stderr"; exit 1 }
        if (!z) { print "config.sh: ssm_user.shell not found" > "/dev/stderr"; exit 1 }
      }'
