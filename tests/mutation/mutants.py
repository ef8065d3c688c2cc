"""The security mutants `scripts/mutants` applies, one at a time, to a scratch copy of the tree.

Each mutant is a plausible bug in a security check: OLD, found exactly once in FILE, is replaced
by NEW, and running TESTS (pytest node ids or files, relative to the tree) must then fail. A
mutant whose OLD no longer occurs exactly once is stale and fails the run: update it with the
code it mutates. To add one, append an entry:

    Mutant("short-id", "agent/module.py",
           "the exact code as it is",
           "the same code with the check broken",
           ("tests/unit/test_x.py::test_that_notices",)),
"""

from __future__ import annotations

from typing import NamedTuple


class Mutant(NamedTuple):
    id: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]


_SPAWN_IT = "tests/integration/test_spawn.py"
_SPAWN_UT = "tests/unit/test_spawn.py"
_DAEMON = "tests/integration/test_daemon.py"
_SSM = "tests/integration/test_ssm_user.py"
_CHECK = "tests/integration/test_check.py"
_DROP_ORDER = f"{_SPAWN_UT}::test_linux_drop_order_groups_then_gid_then_uid_and_verify_passes"

MUTANTS: tuple[Mutant, ...] = (
    # -- nothing runs unrecorded -----------------------------------------------------------------
    Mutant("gate-opens-before-the-record", "agent/spawn.py",
           "before_exec(pid)\n                _open_gate(gate_w, plan.account.name)\n",
           "_open_gate(gate_w, plan.account.name)\n                before_exec(pid)\n",
           ("tests/integration/test_spawn_gate.py",)),
    Mutant("audit-record-not-fsynced", "agent/audit.py",
           "                full_fsync(fd)\n",
           "",
           ("tests/unit/test_audit.py::test_every_record_is_fsynced_before_record_returns",)),
    # -- directories only root may write ---------------------------------------------------------
    Mutant("socket-dir-any-directory", "agent/server.py",
           "if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:",
           "if not stat.S_ISDIR(st.st_mode):",
           (f"{_DAEMON}::test_the_daemon_refuses_a_socket_directory_others_could_write",)),
    Mutant("lock-dir-any-directory", "agent/ssm_user.py",
           "if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:",
           "if not stat.S_ISDIR(st.st_mode):",
           (f"{_SSM}::test_a_lock_directory_others_could_write_is_refused_before_anything_is_"
            "created",)),
    Mutant("registry-dir-any-directory", "agent/registry.py",
           "if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:",
           "if not stat.S_ISDIR(st.st_mode):",
           (f"{_DAEMON}::test_sessions_are_refused_with_a_registry_directory_others_could_write",)),
    # -- the frame limit -------------------------------------------------------------------------
    Mutant("daemon-ignores-configured-frame-limit", "agent/server.py",
           "protocol.FrameDecoder(self.cfg.limits.max_frame)",
           "protocol.FrameDecoder()",
           (f"{_DAEMON}::test_the_configured_frame_limit_is_the_one_enforced",)),
    Mutant("no-frame-limit", "agent/protocol.py",
           "        if size > self.max_frame:\n",
           "        if False:\n",
           ("tests/unit/test_protocol.py::test_an_oversize_header_breaks_the_stream_for_good",
            f"{_DAEMON}::test_hostile_frames_leave_the_daemon_serving")),
    Mutant("bad-frames-answered-with-silence", "agent/server.py",
           "            sock.send(protocol.encode(protocol.error_reply(exc.reason, str(exc))))\n",
           "            pass\n",
           (f"{_DAEMON}::test_hostile_frames_leave_the_daemon_serving",)),
    # -- root is never a target ------------------------------------------------------------------
    Mutant("check-accepts-uid-0", "agent/accounts.py",
           "    if pw.pw_uid == 0:\n",
           "    if False:\n",
           (f"{_CHECK}::test_uid_zero_refused_whatever_the_name",)),
    Mutant("check-accepts-primary-group-0", "agent/accounts.py",
           "    elif pw.pw_gid == 0:\n",
           "    elif False:\n",
           (f"{_CHECK}::test_primary_group_zero_is_refused",)),
    Mutant("spawn-accepts-uid-0", "agent/spawn.py",
           "        if account.uid == 0:\n            raise RootRefused",
           "        if False:\n            raise RootRefused",
           (f"{_SPAWN_UT}::test_identity_refuses_root_and_group_zero",
            f"{_SPAWN_IT}::test_root_and_bad_plans_are_refused_before_fork")),
    # -- the privilege drop and its verification -------------------------------------------------
    Mutant("drop-keeps-root-groups", "agent/spawn.py",
           '    _step("setgroups", ops.setgroups, ident.groups)\n',
           "",
           (_DROP_ORDER, f"{_SPAWN_IT}::test_ids_and_groups_are_exactly_the_targets")),
    Mutant("drop-uid-before-gid", "agent/spawn.py",
           '    _step("setresgid", ops.setresgid, ident.gid, ident.gid, ident.gid)\n'
           '    _step("setresuid", ops.setresuid, ident.uid, ident.uid, ident.uid)\n',
           '    _step("setresuid", ops.setresuid, ident.uid, ident.uid, ident.uid)\n'
           '    _step("setresgid", ops.setresgid, ident.gid, ident.gid, ident.gid)\n',
           (_DROP_ORDER,)),
    Mutant("verify-ignores-uids", "agent/spawn.py",
           "    if uids != (ident.uid,) * len(uids):\n",
           "    if False:\n",
           (f"{_SPAWN_UT}::test_verify_catches_every_mismatch",)),
    Mutant("verify-ignores-groups", "agent/spawn.py",
           "    if groups != list(ident.groups):\n",
           "    if False:\n",
           (f"{_SPAWN_UT}::test_verify_catches_every_mismatch",)),
    Mutant("verify-lets-root-back", "agent/spawn.py",
           'raise StageFailed("verify", 0, f"{call}(0) succeeded: root could be regained")',
           "continue",
           (f"{_SPAWN_UT}::test_verify_wants_eperm_from_setuid_0",
            f"{_SPAWN_IT}::test_setuid_back_to_root_succeeding_is_fatal")),
    # -- what the session's process inherits -----------------------------------------------------
    Mutant("fds-above-the-report-pipe-left-open", "agent/spawn.py",
           "        os.closerange(low, bound)\n",
           "        os.closerange(low, low)\n",
           (f"{_SPAWN_IT}::test_only_stdio_is_open",)),
    Mutant("fds-below-the-report-pipe-left-open", "agent/spawn.py",
           "            os.closerange(low, keep)\n",
           "            pass\n",
           (f"{_SPAWN_IT}::test_only_stdio_is_open",)),
    Mutant("process-forked-ahead-keeps-the-spares-fds", "agent/spawn.py",
           "        os.closerange(chan + 1, bound)\n",
           "        pass\n",
           (f"{_SPAWN_IT}::test_only_stdio_is_open",)),
    Mutant("process-forked-ahead-skips-the-gate", "agent/spawn.py",
           "chan if gated else -1,\n",
           "-1,\n",
           ("tests/integration/test_spawn_gate.py",)),
    Mutant("chdir-as-root", "agent/spawn.py",
           '        become(ops, p.ident)\n'
           '        verify(ops, p.ident)\n'
           '        session_keyring(ops, p.ident)\n'
           '        stage = "close fds"\n'
           '        low = 3\n'
           '        for keep in sorted(fd for fd in (report, gate) if fd != -1):\n'
           '            os.closerange(low, keep)\n'
           '            low = keep + 1\n'
           '        os.closerange(low, bound)\n'
           '        stage = "chdir"\n'
           '        try:\n'
           '            os.chdir(p.home)\n',
           '        os.chdir(p.home)\n'
           '        become(ops, p.ident)\n'
           '        verify(ops, p.ident)\n'
           '        session_keyring(ops, p.ident)\n'
           '        stage = "close fds"\n'
           '        low = 3\n'
           '        for keep in sorted(fd for fd in (report, gate) if fd != -1):\n'
           '            os.closerange(low, keep)\n'
           '            low = keep + 1\n'
           '        os.closerange(low, bound)\n'
           '        stage = "chdir"\n'
           '        try:\n'
           '            pass\n',
           (f"{_SPAWN_IT}::test_home_only_root_can_enter_proves_chdir_after_the_drop",)),
    Mutant("env-forbidden-names-pass", "agent/environ.py",
           "    return name.upper().startswith(FORBIDDEN_PREFIXES)\n",
           "    return False\n",
           ("tests/unit/test_environ.py::test_extra_is_merged_last_but_never_identity_or_forbidden",)),
    Mutant("env-client-names-all-pass", "agent/environ.py",
           "        if name in ALLOWED_CLIENT_ENV:\n",
           "        if True:\n",
           ("tests/unit/test_environ.py::test_locale_and_tz_from_the_client_others_dropped",)),
    Mutant("tty-owned-by-root", "agent/terminal.py",
           "os.fchown(pty.slave, account.uid, gid)",
           "os.fchown(pty.slave, 0, gid)",
           (f"{_SPAWN_IT}::test_pty_slave_ownership_mode_size_and_cloexec",)),
    Mutant("tty-world-writable", "agent/terminal.py",
           "TTY_MODE = 0o620\n",
           "TTY_MODE = 0o666\n",
           (f"{_SPAWN_IT}::test_pty_slave_ownership_mode_size_and_cloexec",)),
    Mutant("pty-ahead-open-to-all", "agent/terminal.py",
           "AHEAD_MODE = 0o600 ",
           "AHEAD_MODE = 0o666 ",
           (f"{_SPAWN_IT}::test_a_pty_opened_ahead_is_roots_alone_until_taken_once",
            "tests/integration/test_spare.py::"
            "test_the_spare_opens_its_sessions_pty_ahead_for_root_alone")),
    Mutant("ahead-keeps-pending-signals", "agent/spawn.py",
           "        for signum in signal.sigpending():\n",
           "        for signum in ():\n",
           ("tests/integration/test_spare.py::"
            "test_signals_the_process_forked_ahead_got_while_waiting_never_reach_its_session",)),
    Mutant("ahead-signals-not-default", "agent/spawn.py",
           "        _set_default(idle_default)\n",
           "        pass\n",
           ("tests/integration/test_attack_pty_ahead.py::"
            "test_the_shell_forked_ahead_starts_with_every_signal_default",)),
    Mutant("pty-opens-in-the-window-kept", "agent/terminal.py",
           "                fcntl.ioctl(slave, _TIOCVHANGUP)\n",
           "                pass\n",
           ("tests/integration/test_attack_pty_ahead.py::"
            "test_no_open_that_passed_devpts_mode_finds_a_slave_opened_ahead_unlocked",)),
    Mutant("pty-given-still-exclusive", "agent/terminal.py",
           "        fcntl.ioctl(pty.slave, termios.TIOCNXCL)\n",
           "        pass\n",
           ("tests/integration/test_attack_pty_ahead.py::"
            "test_a_pty_given_to_its_account_is_open_to_group_tty_again",)),
    Mutant("pty-planted-output-kept", "agent/terminal.py",
           "            fcntl.ioctl(master, termios.TCFLSH, termios.TCIFLUSH)\n",
           "            pass\n",
           ("tests/integration/test_attack_pty_ahead.py::"
            "test_an_open_cut_off_by_the_hang_up_leaves_nothing_in_the_pty_held_ahead",)),
    Mutant("pty-output-left-stopped", "agent/terminal.py",
           "            fcntl.ioctl(slave, termios.TCXONC, termios.TCOON)\n",
           "            pass\n",
           ("tests/integration/test_attack_pty_ahead.py::"
            "test_an_open_cut_off_by_the_hang_up_leaves_nothing_in_the_pty_held_ahead",)),
    Mutant("pty-exposure-not-seen", "agent/terminal.py",
           "        exposed = first.st_uid != 0 or first.st_mode & 0o077 != 0\n",
           "        exposed = False\n",
           ("tests/integration/test_attack_pty_ahead.py::"
            "test_no_open_that_passed_devpts_mode_finds_a_slave_opened_ahead_unlocked",)),
    Mutant("list-rate-not-counted", "agent/server.py",
           "            self._count_list(conn.peer)\n",
           "",
           ("tests/integration/test_attack_peers.py::"
            "test_a_peer_that_floods_list_is_refused_and_others_are_not",)),
    # -- a session always ends -------------------------------------------------------------------
    Mutant("shell-tracer-kept", "agent/session.py",
           "        signal.pidfd_send_signal(fd, signal.SIGKILL)\n",
           "        pass\n",
           ("tests/integration/test_attack_tracer.py",)),
    Mutant("tracer-of-the-tracer-spared", "agent/session.py",
           "        killed.append(process)\n        target = thread\n",
           "        killed.append(process)\n        break\n",
           ("tests/integration/test_attack_tracer.py::"
            "test_a_tracer_that_never_waits_cannot_keep_its_session_from_ending",)),
    Mutant("setuid-tracer-spared", "agent/session.py",
           "or not uids or uids[0] != uid):",
           "or not uids or 0 in uids or uids[0] != uid):",
           ("tests/integration/test_attack_tracer.py::"
            "test_a_tracer_that_never_waits_cannot_keep_its_session_from_ending",)),
    Mutant("tracers-looked-for-once", "agent/session.py",
           "min(deadline, time.monotonic() + TRACER_RECHECK))\n",
           "deadline)\n",
           ("tests/integration/test_attack_tracer.py::"
            "test_a_long_chain_of_tracers_or_one_that_takes_the_shell_again_is_killed_too",)),
    Mutant("tracer-chain-from-the-process", "agent/session.py",
           "        killed.append(process)\n        target = thread\n",
           "        killed.append(process)\n        target = process\n",
           ("tests/integration/test_attack_tracer.py::"
            "test_a_tracer_that_never_waits_cannot_keep_its_session_from_ending",)),
    Mutant("sweep-waits-for-each", "agent/cgroup.py",
           "            cg.kill()  # now, all waited for at once below\n",
           "            cg.end(0.0)\n",
           ("tests/integration/test_end_mode_all.py::"
            "test_cgroups_that_cannot_be_emptied_hold_up_the_start_only_so_long",)),
    Mutant("killed-shell-waited-for-unbounded", "agent/session.py",
           "            if not self._wait_for(lambda: self.status is not None,\n"
           "                                  time.monotonic() + TRACER_GRACE):\n",
           "            self.status = os.waitpid(self.st.pid, 0)[1]\n"
           "            if not self._wait_for(lambda: self.status is not None,\n"
           "                                  time.monotonic() + TRACER_GRACE):\n",
           ("tests/integration/test_attack_tracer.py::"
            "test_a_root_tracer_is_left_alone_and_the_end_waits_for_it_only_so_long",)),
    Mutant("pty-unguarded-not-logged", "agent/server.py",
           "        log.warning(\"pty.setup_unguarded\", reason=reason)\n",
           "        pass\n",
           ("tests/integration/test_attack_pty_ahead.py::"
            "test_the_daemon_says_at_start_up_when_its_ptys_are_unguarded_and_still_serves_them",)),
    Mutant("pty-unlocked-before-its-mode", "agent/terminal.py",
           "        os.chown(path, 0, 0, follow_symlinks=False)\n"
           "        os.chmod(path, AHEAD_MODE)\n"
           "        fcntl.ioctl(master, _TIOCSPTLCK, struct.pack(\"i\", 0))\n",
           "        fcntl.ioctl(master, _TIOCSPTLCK, struct.pack(\"i\", 0))\n"
           "        os.chown(path, 0, 0, follow_symlinks=False)\n"
           "        os.chmod(path, AHEAD_MODE)\n",
           ("tests/integration/test_attack_pty_ahead.py::"
            "test_a_new_slave_is_never_open_to_group_tty_before_its_mode_is_set",)),
    # -- who may use the socket ------------------------------------------------------------------
    Mutant("peer-any-uid", "agent/peer.py",
           "    if peer.uid == 0 or peer.uid in set(allowed_uids):\n",
           "    if True:\n",
           (f"{_DAEMON}::test_unauthorized_peer_is_refused",)),
    Mutant("peer-any-group", "agent/peer.py",
           "    gids = set(allowed_gids)\n"
           "    return peer.gid in gids or bool(gids.intersection(peer.groups))\n",
           "    gids = set(allowed_gids)\n    return True\n",
           (f"{_DAEMON}::test_unauthorized_peer_is_refused",)),
    # -- the Run As decision ---------------------------------------------------------------------
    Mutant("refused-tag-user-falls-back", "agent/resolve.py",
           "    if report.account is None:\n",
           "    if report.account is None and not default_user:\n",
           ("tests/integration/test_resolve.py::test_tag_user_refused_never_falls_back",)),
    Mutant("deny-users-ignored", "agent/accounts.py",
           "    if user in policy.deny_users:\n"
           '        return f"{user!r} is in policy.deny_users"\n'
           "    for denied in policy.deny_users:\n",
           "    if False:\n"
           '        return f"{user!r} is in policy.deny_users"\n'
           "    for denied in ():\n",
           (f"{_CHECK}::test_node_policy_restricts",)),
    Mutant("deny-users-alias-passes", "agent/accounts.py",
           "            if pwd.getpwnam(denied).pw_uid == uid:\n",
           "            if False:\n",
           (f"{_CHECK}::test_deny_list_covers_uid_aliases",)),
    # -- peers are not one tenant ------------------------------------------------------------
    Mutant("peer-sees-every-session", "agent/peer.py",
           "return isinstance(owner, int) and not isinstance(owner, bool) and owner == peer.uid",
           "return True",
           ("tests/integration/test_peers.py::test_a_peer_sees_and_ends_only_its_own_sessions",)),
    Mutant("every-peer-is-admin", "agent/peer.py",
           "    gids = set(admin_gids)\n    return peer.gid in gids",
           "    gids = set(admin_gids)\n    return True or peer.gid in gids",
           ("tests/integration/test_peers.py::test_a_peer_sees_and_ends_only_its_own_sessions",)),
    Mutant("admin-group-ids-kept-from-load", "agent/server.py",
           "return is_admin(peer, _group_ids(self.cfg.peers.admin_groups))",
           "return is_admin(peer, self.__dict__.setdefault(\"_kept\", "
           "frozenset(_group_ids(self.cfg.peers.admin_groups))))",
           ("tests/integration/test_attack_peers.py::"
            "test_a_group_given_a_deleted_admin_groups_id_grants_no_admin",)),
    Mutant("allowed-group-ids-kept-from-load", "agent/server.py",
           "_group_ids(self.cfg.peers.allowed_groups)):",
           "self.__dict__.setdefault(\"_kept_allowed\", "
           "frozenset(_group_ids(self.cfg.peers.allowed_groups)))):",
           ("tests/integration/test_attack_peers.py::"
            "test_a_group_given_a_deleted_allowed_groups_id_allows_nobody",)),
    Mutant("pam-modules-programs-outlive-a-killed-pam-process", "agent/pam.py",
           "        found.extend(c for c in _children(parent) if c not in found)\n",
           "        found.extend(())\n",
           ("tests/integration/test_attack_pam.py::"
            "test_a_module_hanging_in_close_is_killed_with_the_pam_process",)),
    Mutant("pam-process-death-unrecorded", "agent/session.py",
           "        pam.process.ended(status)\n",
           "",
           ("tests/integration/test_pam_process_end.py::"
            "test_a_session_whose_pam_process_was_killed_says_pam_did_not_close_it",)),
    Mutant("no-per-peer-connection-share", "agent/server.py",
           "if peer.uid != 0 and sum(c.peer.uid == p"
           "eer.uid for c in self._conns.values()) >= share:",
           "if False:",
           ("tests/integration/test_peers.py::test_one_peer_cannot_take_every_connection",)),
    Mutant("socket-ancestors-not-checked", "agent/server.py",
           "            if st.st_uid != 0 or st.st_mode & "
           "_untrusted_write_bits(ancestor, st, sys_platform):"
           "\n                raise ConfigError(\n"
           "                    f\"{subject}",
           "            if False:\n                raise ConfigError(\n"
           "                    f\"{subject}",
           ("tests/integration/test_peers.py::"
            "test_the_daemon_refuses_a_socket_path_under_an_untrusted_directory",
            "tests/integration/test_attack_paths.py::"
            "test_the_daemon_refuses_session_records_under_a_directory_a_user_controls")),
    Mutant("darwin-group-write-trusted-anywhere", "agent/server.py",
           "    if sys_platform == \"darwin\" and path in DARWIN_VAR_RUN \\\n",
           "    if sys_platform == \"darwin\" and True \\\n",
           ("tests/unit/test_darwin_layout.py::"
            "test_a_group_writable_directory_planted_under_var_run_is_refused_on_macos",)),
    Mutant("state-dir-ancestors-not-checked", "agent/cli.py",
           "    check_state_dir(cfg.session.state_dir)\n",
           "",
           ("tests/integration/test_attack_paths.py::"
            "test_the_daemon_refuses_session_records_under_a_directory_a_user_controls",)),
    Mutant("client-trusts-any-server", "agent/client.py",
           "    if uid != server_uid:\n        raise UntrustedServer(",
           "    if False:\n        raise UntrustedServer(",
           ("tests/integration/test_peers.py::"
            "test_the_client_library_sends_nothing_to_a_server_that_is_not_root",
            "tests/integration/test_peers.py::test_the_cli_sends_nothing_to_a_server_that_is_not_root")),
    Mutant("spare-keeps-the-old-config", "agent/server.py",
           "        self._drop_spare()\n        self._want_spare = True\n",
           "",
           (f"{_DAEMON}::test_sighup_reloads_config",)),
    Mutant("spare-holds-the-daemons-sockets", "agent/server.py",
           "        self._release_inherited(sel)\n        sig = session.Signals()\n"
           "        os.setsid()\n        name = ",
           "        sig = session.Signals()\n        os.setsid()\n        name = ",
           ("tests/integration/test_spare.py::test_one_idle_spare_reachable_only_by_the_daemon",)),
    Mutant("terminate-not-audited", "agent/server.py",
           "        self.audit.record(\"session.terminate_requested\", session_id=session_id,\n",
           "        (lambda *a, **k: None)(\"session"
           ".terminate_requested\", session_id=session_id,\n",
           ("tests/integration/test_peers.py::test_a_peer_sees_and_ends_only_its_own_sessions",)),
    Mutant("no-per-peer-session-share", "agent/server.py",
           "if uid != 0 and owners.count(uid) >= share:",
           "if False:",
           ("tests/integration/test_attack_peers.py::test_one_peer_cannot_take_every_session",)),
    Mutant("exited-supervisor-counts-as-live", "agent/registry.py",
           "        if fields[0] in (b\"Z\", b\"X\"):\n",
           "        if False:\n",
           ("tests/unit/test_registry_liveness.py::"
            "test_an_exited_process_not_yet_reaped_is_gone",)),
    Mutant("claim-judges-a-record-by-its-id", "agent/registry.py",
           "                        if self._names_live_process(session_id):\n",
           "                        if self._load_live(session_id) is not None:\n",
           ("tests/unit/test_registry_liveness.py::"
            "test_a_claim_never_removes_the_record_of_a_live_session",)),
    Mutant("client-gives-up-on-a-full-queue", "agent/client.py",
           "                sock.connect(path)  # blocking: the socket has no timeout yet\n",
           "                sock.settimeout(timeout)\n                sock.connect(path)\n",
           ("tests/unit/test_peer_scope.py::"
            "test_a_full_accept_queue_makes_the_client_wait_not_fail",
            "tests/integration/test_attack_peers.py::"
            "test_a_peer_flooding_the_socket_with_connects_cannot_lock_the_others_out")),
    # -- a replayed recording stays off the administrator's terminal -------------------------
    Mutant("replay-keeps-strings", "agent/termfilter.py",
           "                elif c in _STRING_STARTS:\n                    self._seq = \"\"\n"
           "                    self._start_string()\n                    return i + 1\n",
           "                elif c in _STRING_STARTS:\n                    self._seq = \"\"\n"
           "                    out.append(ESC + c)\n                    return i + 1\n",
           ("tests/unit/test_termfilter.py::test_a_hostile_sequence_split_anywhere_is_still_dropped",)),
    Mutant("replay-keeps-queries", "agent/termfilter.py",
           "        if prefix or (final not in _CSI_KEPT and final != \"u\"):",
           "        if prefix == \"<\":",
           ("tests/unit/test_termfilter.py::test_hostile_sequences_are_dropped",)),
    Mutant("replay-keeps-decsed-scrollback-erase", "agent/termfilter.py",
           "            if final not in \"JK\" or body not in ERASE_KEPT:  # DECSED, DECSEL\n",
           "            if final not in \"JK\":  # DECSED, DECSEL\n",
           ("tests/unit/test_termfilter.py::test_hostile_sequences_are_dropped",)),
    Mutant("replay-c1-csi-passed", "agent/termfilter.py",
           "_GROUND_STOP = \"[\\x00-\\x07\\x0e-\\x1f\\x7f-\\x9f\\ud800-\\udfff]\"",
           "_GROUND_STOP = \"[\\x00-\\x07\\x0e-\\x1f\\x7f-\\x9a\\x9c-\\x9f\\ud800-\\udfff]\"",
           ("tests/unit/test_termfilter.py::test_hostile_sequences_are_dropped",)),
    Mutant("replay-unfiltered", "agent/cli.py",
           "    screen = None if args.raw else termfilter.Filter()\n",
           "    screen = None\n",
           ("tests/unit/test_recordings.py::test_replay_leaves_out_what_acts_on_the_terminal",)),
    # -- end mode `all` means all ------------------------------------------------------------
    Mutant("session-outside-its-cgroup", "agent/session.py",
           "                _adopt(cgroup, pid)\n",
           "                pass\n",
           ("tests/integration/test_end_mode_all.py::test_fast_hopper_is_gone_within_the_grace_period",
            "tests/integration/test_end_mode_all.py::test_the_shell_starts_in_its_session_cgroup")),
    # -- what a session shares with the daemon and other sessions ----------------------------
    Mutant("no-fresh-session-keyring", "agent/spawn.py",
           "    _step(\"session keyring\", keyring.join_fresh_session_keyring, ops.keyctl)\n",
           "",
           ("tests/integration/test_session_keyring.py",)),
    # -- ssm-user's home must be trusted before sudo ------------------------------------------
    Mutant("ssm-user-home-any-owner", "agent/homedir.py",
           "    if st.st_uid not in (uid, 0):\n     "
           "   return Problem(home, f\"home {home} is owned",
           "    if False:\n        return Problem(home, f\"home {home} is owned",
           ("tests/unit/test_ssm_user_home.py::"
            "test_creation_over_an_existing_home_of_another_uid_is_refused",
            "tests/unit/test_ssm_user_home.py::"
            "test_an_existing_home_owned_by_another_uid_is_refused_and_no_drop_in")),
    Mutant("ssm-user-home-parents-not-checked", "agent/homedir.py",
           "    if st.st_mode & 0o022:\n        return Problem(path, f\"{path}, above the home",
           "    if False:\n        return Problem(path, f\"{path}, above the home",
           ("tests/unit/test_ssm_user_home.py::"
            "test_creation_under_a_parent_others_can_write_is_refused",)),
    # -- ssm-user and its sudoers drop-in --------------------------------------------------------
    Mutant("drop-in-world-readable", "agent/sudoers.py",
           "DROP_IN_MODE = 0o440\n",
           "DROP_IN_MODE = 0o644\n",
           (f"{_SSM}::test_ensure_creates_the_account_and_the_drop_in",)),
    Mutant("drop-in-not-validated", "agent/ssm_user.py",
           "    validate = visudo_validator(visudo, runner) if visudo is not None else None\n",
           "    validate = None\n",
           (f"{_SSM}::test_visudo_refusing_keeps_the_previous_drop_in",)),
    Mutant("visudo-not-strict", "agent/ssm_user.py",
           "ok, why = _visudo_check(visudo, runner, path, strict=True)",
           "ok, why = _visudo_check(visudo, runner, path, strict=False)",
           (f"{_SSM}::test_real_visudo_refuses_bad_content",)),
    Mutant("ssm-user-lock-shared", "agent/ssm_user.py",
           "    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX\n",
           "    mode = fcntl.LOCK_SH\n",
           (f"{_SSM}::test_the_creator_waits_for_a_session_holding_the_lock_shared",
            f"{_SSM}::test_twenty_simultaneous_first_sessions_create_it_once")),
    # -- login records never hold a session up -----------------------------------------------------
    Mutant("lastlog-open-blocks", "agent/utmp.py",
           "os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)",
           "os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)",
           ("tests/unit/test_utmp.py::"
            "test_linux_a_fifo_in_place_of_lastlog_is_reported_not_waited_on",)),
)
