"""The decisions of roles/postgresql/files/claude-kit-patroni-callback that need no server: which
recovery state each of Patroni's role names means, that a host without PgBouncer is left alone,
that PgBouncer forgets what it cached twice (at once, and once PostgreSQL is what the role says),
and what it prints and exits with when PgBouncer refuses or PostgreSQL does not get there. The
callback itself runs on a real cluster in the ha scenario (test_failover.py: the members'
PgBouncers after a switchover)."""

import importlib.machinery
import importlib.util
import os

import pytest

PROGRAM = os.path.join(os.path.dirname(__file__), "..", "..", "roles", "postgresql", "files",
                       "claude-kit-patroni-callback")


def load():
    loader = importlib.machinery.SourceFileLoader("claude_kit_patroni_callback", PROGRAM)
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader("claude_kit_patroni_callback", loader))
    loader.exec_module(module)
    return module


class FakeServers:
    """psql's answers: PgBouncer's RECONNECT (ok or refused) and PostgreSQL's pg_is_in_recovery()
    in turn (None: not answering)."""

    def __init__(self, recovery, reconnect_ok=True):
        self.recovery = list(recovery)
        self.reconnect_ok = reconnect_ok
        self.calls = []

    def psql(self, port, dbname, user, command):
        self.calls.append((port, dbname, user, command))
        if command == "RECONNECT":
            return (True, "") if self.reconnect_ok else (False, "ERROR:  admin access needed")
        state = self.recovery.pop(0) if len(self.recovery) > 1 else self.recovery[0]
        if state is None:
            return False, "could not connect to server"
        return True, "t" if state else "f"


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


@pytest.fixture
def program(tmp_path, monkeypatch):
    module = load()
    monkeypatch.setattr(module, "SOCKET_DIR", str(tmp_path))
    (tmp_path / ".s.PGSQL.6432").touch()
    clock = Clock()
    monkeypatch.setattr(module.time, "monotonic", clock)
    monkeypatch.setattr(module.time, "sleep", clock.sleep)
    module.fake_clock = clock
    return module


def args(module, role, action="on_role_change", wait="5"):
    return module.parse(["--pgbouncer-port", "6432", "--postgresql-port", "5432", "--wait", wait,
                         action, role, "claude-kit"])


@pytest.mark.parametrize("role, expected", [
    ("master", False), ("primary", False), ("promoted", False),
    ("replica", True), ("standby_leader", True), ("demoted", True),
    ("uninitialized", None),
])
def test_each_role_name_means_a_recovery_state(role, expected):
    assert load().expected_recovery(role) is expected


def test_a_host_without_pgbouncer_is_left_alone(program, tmp_path, monkeypatch, capsys):
    (tmp_path / ".s.PGSQL.6432").unlink()
    servers = FakeServers([False])
    monkeypatch.setattr(program, "psql", servers.psql)
    assert program.run(args(program, "master")) == 0
    assert servers.calls == []
    assert "no PgBouncer on this host" in capsys.readouterr().out


def test_a_promotion_reconnects_at_once_and_again_once_out_of_recovery(program, monkeypatch, capsys):
    # Still in recovery for two polls, then promoted.
    servers = FakeServers([True, True, False])
    monkeypatch.setattr(program, "psql", servers.psql)
    assert program.run(args(program, "master")) == 0
    assert program.fake_clock.now == 2.0  # two polls a second apart, on the fake clock (no real sleep)
    commands = [c[3] for c in servers.calls]
    assert commands[0] == "RECONNECT" and commands[-1] == "RECONNECT"
    assert commands[1:-1] == ["SELECT pg_is_in_recovery()"] * 3
    # The admin console as user pgbouncer on PgBouncer's port; PostgreSQL as this OS user.
    assert servers.calls[0][:3] == (6432, "pgbouncer", "pgbouncer")
    assert servers.calls[1][:3] == (5432, "postgres", None)
    assert "reconnected" in capsys.readouterr().out


def test_a_demotion_waits_for_recovery_while_the_server_restarts(program, monkeypatch):
    servers = FakeServers([None, None, True])  # down while Patroni restarts it as a standby
    monkeypatch.setattr(program, "psql", servers.psql)
    assert program.run(args(program, "replica")) == 0
    assert [c[3] for c in servers.calls].count("RECONNECT") == 2


def test_a_start_only_waits_for_the_server_to_answer(program, monkeypatch):
    servers = FakeServers([None, False])
    monkeypatch.setattr(program, "psql", servers.psql)
    assert program.run(args(program, "uninitialized", action="on_start")) == 0


def test_a_role_the_server_never_reaches_fails_after_the_wait_naming_it(program, monkeypatch, capsys):
    servers = FakeServers([True])  # never promoted
    monkeypatch.setattr(program, "psql", servers.psql)
    assert program.run(args(program, "master", wait="3")) == 1
    err = capsys.readouterr().err
    assert "was not out of recovery within 3 s" in err
    # Polled about once a second for the 3 s (the fake clock), then the second RECONNECT all the
    # same: a login cached while the server was changing must not stay.
    commands = [c[3] for c in servers.calls]
    assert commands.count("SELECT pg_is_in_recovery()") == 4
    assert commands[0] == commands[-1] == "RECONNECT"


def test_a_stop_only_reconnects(program, monkeypatch, capsys):
    servers = FakeServers([None])  # the server is going away
    monkeypatch.setattr(program, "psql", servers.psql)
    assert program.run(args(program, "master", action="on_stop")) == 0
    assert [c[3] for c in servers.calls] == ["RECONNECT"]


def test_a_missing_pgbouncer_fails_when_it_should_be_running(program, tmp_path, monkeypatch, capsys):
    (tmp_path / ".s.PGSQL.6432").unlink()
    monkeypatch.setattr(program, "psql", FakeServers([False]).psql)
    parsed = program.parse(["--pgbouncer-port", "6432", "--postgresql-port", "5432", "--require-pgbouncer",
                            "on_role_change", "master", "claude-kit"])
    assert program.run(parsed) == 1
    assert "PgBouncer is not running here" in capsys.readouterr().err


def test_pgbouncer_refusing_reconnect_fails_with_its_message(program, monkeypatch, capsys):
    servers = FakeServers([False], reconnect_ok=False)
    monkeypatch.setattr(program, "psql", servers.psql)
    assert program.run(args(program, "master")) == 1
    assert "PgBouncer refused RECONNECT: ERROR:  admin access needed" in capsys.readouterr().err


def test_psql_that_cannot_run_is_a_failure_not_a_crash(program, monkeypatch):
    monkeypatch.setattr(program.subprocess, "run", lambda *a, **k: (_ for _ in ()).throw(FileNotFoundError("psql")))
    assert program.psql(6432, "pgbouncer", "pgbouncer", "RECONNECT") == (False, "psql")
