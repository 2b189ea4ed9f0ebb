"""The decisions of the health-check program (roles/monitoring/files/claude-kit-check):
every threshold's boundaries, the UNKNOWN cases, counters kept between runs,
the Nagios exit-code order, the outputs (text, JSON, Prometheus textfile) and
the configuration's errors. Nothing here talks to a real server: the services'
answers are given as the program would receive them."""

import datetime
import importlib.machinery
import importlib.util
import io
import json
import os
import socket
import sys
import types

import pytest

PROGRAM = os.path.join(os.path.dirname(__file__), "..", "..", "roles", "monitoring", "files", "claude-kit-check")
BACKUP_PROGRAM = os.path.join(os.path.dirname(__file__), "..", "..", "roles", "backup", "files", "claude-kit-backup")


def load(path, name):
    loader = importlib.machinery.SourceFileLoader(name, path)
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader))
    loader.exec_module(module)
    return module


ckc = load(PROGRAM, "claude_kit_check")
OK, WARNING, CRITICAL, UNKNOWN = ckc.OK, ckc.WARNING, ckc.CRITICAL, ckc.UNKNOWN
NOW = datetime.datetime(2026, 12, 2, 12, 0, 0, tzinfo=datetime.UTC).timestamp()

PG_TH = {
    "connections_warning": 80, "connections_critical": 95, "disk_warning": 80, "disk_critical": 90,
    "transaction_warning_seconds": 300, "transaction_critical_seconds": 1800,
    "idle_in_transaction_warning_seconds": 60, "idle_in_transaction_critical_seconds": 300,
    "cache_hit_warning": 0.95, "cache_hit_critical": 0.90, "cache_hit_min_blocks": 10000,
    "wraparound_warning": 500000000, "wraparound_critical": 1000000000,
    "dead_tuples_warning": 0.2, "dead_tuples_critical": 0.5, "dead_tuples_min": 10000,
    "deadlocks_warning": 1, "deadlocks_critical": 5,
    "replication_lag_warning_bytes": 16777216, "replication_lag_critical_bytes": 268435456,
    "replication_lag_warning_seconds": 30, "replication_lag_critical_seconds": 300,
}
REDIS_TH = {"memory_warning": 80, "memory_critical": 95, "evicted_warning": 1000, "evicted_critical": 100000,
            "rejected_warning": 1, "rejected_critical": 10}
NGINX_TH = {"active_warning": 500, "active_critical": 900, "dropped_warning": 1, "dropped_critical": 10,
            "http_5xx_warning": 0.01, "http_5xx_critical": 0.05, "http_5xx_min_requests": 20}
DAEMON_TH = {"pending_sync_warning": 1, "pending_sync_critical": 1000, "restarts_warning": 1, "restarts_critical": 3}
BACKUP_TH = {"age_warning_hours": 25, "age_critical_hours": 26, "drill_warning_days": 8}
CERT_TH = {"expiry_warning_days": 21, "expiry_critical_days": 7}


def config(tmp_path, **sections):
    """A complete configuration with every service; sections replace parts of it."""
    cfg = {
        "state_dir": str(tmp_path / "state"),
        "textfile_dir": str(tmp_path / "textfile"),
        "checks": ["postgresql", "backup"],
        "postgresql": {"host": "/var/run/postgresql", "port": 5432, "user": "claude_monitor", "dbname": "claude",
                       "connect_timeout": 5, "thresholds": dict(PG_TH)},
        "redis": {"host": "127.0.0.1", "port": 6379, "user": "claude_monitor",
                  "password_file": str(tmp_path / "redis.pass"), "timeout": 5, "thresholds": dict(REDIS_TH)},
        "nginx": {"status_url": "http://127.0.0.1:8081/nginx_status", "access_log": str(tmp_path / "access.log"),
                  "interval_seconds": 300, "timeout": 5, "thresholds": dict(NGINX_TH)},
        "daemon": {"health_url": "http://127.0.0.1:5000/health", "container": "claude-daemon", "timeout": 5,
                   "thresholds": dict(DAEMON_TH)},
        "backup": {"state_dir": str(tmp_path / "backup"), "methods": ["dump", "pgbackrest"], "drill": True,
                   "thresholds": dict(BACKUP_TH)},
        "certificate": {"files": {"server": str(tmp_path / "server.crt"), "ca": str(tmp_path / "ca.crt")},
                        "thresholds": dict(CERT_TH)},
    }
    cfg.update(sections)
    return cfg


def write_config(tmp_path, cfg):
    path = tmp_path / "check.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def by_name(items):
    return {item.name: item for item in items}


# --- grading and the overall state -------------------------------------------

@pytest.mark.parametrize("value, expected", [
    (0, OK), (79.99, OK), (80, WARNING), (94.99, WARNING), (95, CRITICAL), (120, CRITICAL), (None, UNKNOWN),
])
def test_higher_is_worse_reaching_a_threshold_counts(value, expected):
    assert ckc.grade(value, 80, 95) == expected


@pytest.mark.parametrize("value, expected", [
    (1.0, OK), (0.9501, OK), (0.95, WARNING), (0.9001, WARNING), (0.90, CRITICAL), (0.1, CRITICAL),
])
def test_lower_is_worse_reaching_a_threshold_counts(value, expected):
    assert ckc.grade(value, 0.95, 0.90, higher_is_worse=False) == expected


def test_a_threshold_of_none_is_not_checked():
    assert ckc.grade(10 ** 9, None, None) == OK
    assert ckc.grade(10, 5, None) == WARNING
    assert ckc.grade(10, None, 5) == CRITICAL


@pytest.mark.parametrize("codes, expected", [
    ([], OK),
    ([OK, OK], OK),
    ([OK, WARNING], WARNING),
    ([WARNING, UNKNOWN], UNKNOWN),
    ([UNKNOWN, WARNING, OK], UNKNOWN),
    ([UNKNOWN, CRITICAL], CRITICAL),
    ([CRITICAL, UNKNOWN, WARNING, OK], CRITICAL),
])
def test_the_overall_state_follows_nagios_critical_unknown_warning_ok(codes, expected):
    assert ckc.overall(codes) == expected


def test_the_breach_names_the_threshold_reached_and_its_direction():
    assert ckc.threshold_item("x", 96, "%", 80, 95, "").breach == ">= 95%"
    assert ckc.threshold_item("x", 85, "%", 80, 95, "").breach == ">= 80%"
    assert ckc.threshold_item("x", 50, "%", 80, 95, "").breach == ""
    assert ckc.threshold_item("x", 0.9, "ratio", 0.95, 0.9, "", higher_is_worse=False).breach == "<= 90%"


# --- counters between runs ----------------------------------------------------

@pytest.mark.parametrize("previous, current, delta, note", [
    (None, 42, 0, "first run, baseline taken"),
    (10, 3, 0, "counter went backwards"),
    (10, 10, 0, None),
    (10, 17, 7, None),
])
def test_since_last_run(previous, current, delta, note):
    got_delta, got_note = ckc.since_last(previous, current)
    assert got_delta == delta
    assert got_note == note or (note and note in got_note)


@pytest.mark.parametrize("previous, current, code", [
    (None, 500, OK), (500, 3, OK), (10, 10, OK), (10, 11, WARNING), (10, 14, WARNING), (10, 15, CRITICAL),
])
def test_a_counter_item_judges_the_increase_and_never_the_first_run_or_a_reset(previous, current, code):
    item = ckc.counter_item("deadlocks", previous, current, PG_TH["deadlocks_warning"],
                            PG_TH["deadlocks_critical"], "deadlocks")
    assert item.code == code
    if previous is None:
        assert "first run, baseline taken" in item.summary
    if previous is not None and current < previous:
        assert "new baseline" in item.summary and item.value == 0


def test_counters_of_another_origin_are_forgotten():
    state = {"origin": "run-a", "counters": {"evicted_keys": 5}}
    assert ckc.previous_counters(state, "run-a") == {"evicted_keys": 5}
    assert ckc.previous_counters(state, "run-b") == {}
    assert ckc.previous_counters(state) == {"evicted_keys": 5}
    assert ckc.previous_counters({}) == {}


# --- PostgreSQL -----------------------------------------------------------------

@pytest.mark.parametrize("returncode, code, text", [
    (0, OK, "accepting connections"),
    (1, CRITICAL, "not accepting connections"),
    (2, CRITICAL, "not accepting connections (no response)"),
    (None, CRITICAL, "not accepting connections"),
    (3, UNKNOWN, "pg_isready exited 3"),
])
def test_pg_isready_answers(returncode, code, text):
    item = ckc.ready_item(returncode)
    assert (item.name, item.code) == ("ready", code) and text in item.summary


@pytest.mark.parametrize("used, code", [(79, OK), (80, WARNING), (94, WARNING), (95, CRITICAL), (100, CRITICAL)])
def test_connections_percent_of_the_slots_left_to_clients(used, code):
    item = ckc.connections_item(used, 100, PG_TH)
    assert item.code == code and item.value == used and item.unit == "%"


def test_connections_summary_and_breach_as_the_summary_line_shows_them():
    item = ckc.connections_item(96, 97, PG_TH)
    assert item.summary == "96/97 (99%)" and item.breach == ">= 95%" and item.code == CRITICAL
    assert ckc.connections_item(12, 97, PG_TH).summary == "12/97 (12%)"
    assert ckc.connections_item(3, 0, PG_TH).code == UNKNOWN


def statvfs(blocks, bfree, bavail, frsize=4096):
    return types.SimpleNamespace(f_blocks=blocks, f_bfree=bfree, f_bavail=bavail, f_frsize=frsize)


@pytest.mark.parametrize("bfree, code", [(21, OK), (20, WARNING), (11, WARNING), (10, CRITICAL), (0, CRITICAL)])
def test_disk_percent_used(bfree, code):
    item = ckc.disk_item("/var/lib/postgresql/15/main", statvfs(100, bfree, bfree), PG_TH)
    assert item.code == code and item.value == 100 - bfree
    assert "/var/lib/postgresql/15/main" in item.summary


def test_disk_counts_like_df_the_root_reserve_is_not_free():
    # 70 blocks used, 30 free of which 10 are reserved for root: 70 / (70 + 20).
    item = ckc.disk_item("/d", statvfs(100, 30, 20), PG_TH)
    assert item.value == pytest.approx(77.78, abs=0.01) and item.code == OK
    assert ckc.disk_item("/d", statvfs(0, 0, 0), PG_TH).code == UNKNOWN


@pytest.mark.parametrize("seconds, code", [(0.5, OK), (299.96, OK), (300, WARNING), (1799.99, WARNING),
                                           (1800, CRITICAL)])
def test_longest_transaction(seconds, code):
    item = ckc.transaction_item((seconds, 4242, "claude_app", "active"), PG_TH)
    assert item.code == code and "pid 4242" in item.summary and item.unit == "s"


def test_no_open_transaction_is_ok():
    item = ckc.transaction_item(None, PG_TH)
    assert item.code == OK and item.value == 0


@pytest.mark.parametrize("ages, code, summary", [
    ([], OK, "no session"),
    ([59.9], OK, "1 session, longest 59s"),
    ([60], WARNING, "1 session for 60s"),
    ([299, 10], WARNING, "1 session for 299s"),
    ([412, 10], CRITICAL, "1 session for 412s"),
    ([400, 350, 10], CRITICAL, "2 sessions, longest 400s"),
])
def test_idle_in_transaction_counts_the_sessions_over_the_warning(ages, code, summary):
    item = ckc.idle_in_transaction_item(ages, PG_TH)
    assert item.code == code and item.summary == summary


@pytest.mark.parametrize("hit, read, code", [
    (9600, 400, OK), (9500, 500, WARNING), (9100, 900, WARNING), (9000, 1000, CRITICAL), (5000, 5000, CRITICAL),
])
def test_cache_hit_ratio_lower_is_worse(hit, read, code):
    item = ckc.cache_hit_item(hit, read, PG_TH)
    assert item.code == code and item.unit == "ratio" and item.value == pytest.approx(hit / (hit + read))


def test_cache_hit_below_the_minimum_blocks_is_not_judged():
    item = ckc.cache_hit_item(10, 9989, PG_TH)
    assert item.code == OK and "too few reads to judge" in item.summary and item.value is None
    assert ckc.cache_hit_item(0, 10000, PG_TH).code == CRITICAL  # at the minimum it is judged
    assert ckc.cache_hit_item(None, None, PG_TH).code == OK


@pytest.mark.parametrize("age, code", [(499999999, OK), (500000000, WARNING), (999999999, WARNING),
                                       (1000000000, CRITICAL)])
def test_wraparound_age(age, code):
    item = ckc.wraparound_item("claude", age, PG_TH)
    assert item.code == code and "claude" in item.summary


@pytest.mark.parametrize("dead, live, code", [
    (19999, 80001, OK), (20000, 80000, WARNING), (49999, 50001, WARNING), (50000, 50000, CRITICAL),
])
def test_dead_tuples_share_of_the_worst_table(dead, live, code):
    item = ckc.dead_tuples_item([("public.small", 10, 0), ("public.usage_data", dead, live)], PG_TH)
    assert item.code == code and "public.usage_data" in item.summary


def test_dead_tuples_ignores_tables_under_the_minimum_and_names_the_worst():
    assert ckc.dead_tuples_item([("public.tiny", 9999, 0)], PG_TH).code == OK
    assert ckc.dead_tuples_item([], PG_TH).summary == "no table with 10000 or more dead rows"
    worst = ckc.dead_tuples_item([("public.a", 10000, 90000), ("public.b", 60000, 40000)], PG_TH)
    assert worst.code == CRITICAL and worst.summary.startswith("public.b 60% dead")


def test_replication_without_replicas_is_ok():
    items = ckc.replication_items(False, [], None, PG_TH)
    assert [(i.name, i.code, i.summary, i.value) for i in items] == [
        ("replication_lag_bytes", OK, "no replicas", None), ("replication_lag_seconds", OK, "no replicas", None)]


@pytest.mark.parametrize("lag_bytes, lag_seconds, codes", [
    (16777215, 29.9, (OK, OK)),
    (16777216, 30, (WARNING, WARNING)),
    (268435455, 299, (WARNING, WARNING)),
    (268435456, 300, (CRITICAL, CRITICAL)),
])
def test_replication_lag_of_the_worst_replica(lag_bytes, lag_seconds, codes):
    replicas = [("standby-a", 0.0, 0.0), ("standby-b", float(lag_bytes), lag_seconds)]
    items = ckc.replication_items(False, replicas, None, PG_TH)
    assert tuple(item.code for item in items) == codes
    assert all("2 replicas" in item.summary for item in items)
    if codes[0] != OK:
        assert "standby-b" in items[0].summary


def test_replication_lag_not_reported_yet_is_no_lag():
    items = ckc.replication_items(False, [("standby-a", None, None)], None, PG_TH)
    assert [(i.code, i.value) for i in items] == [(OK, 0), (OK, 0)]
    assert "no lag reported" in items[0].summary


def test_a_standby_reports_its_own_lag():
    items = ckc.replication_items(True, [], (0.0, 301.0), PG_TH)
    assert [i.code for i in items] == [OK, CRITICAL] and "standby" in items[1].summary
    items = ckc.replication_items(True, [], (None, None), PG_TH)
    assert [i.code for i in items] == [OK, UNKNOWN]


ARCHIVED_AT, FAILED_EARLIER, FAILED_LATER = NOW - 60, NOW - 600, NOW - 30


@pytest.mark.parametrize("row, previous_failed, code, text", [
    (("off", 0, None, None, 0, None, None), None, OK, "archiving off"),
    (("on", 120, "00000001000000000000007A", ARCHIVED_AT, 0, None, None), 0, OK, "120 WAL files archived"),
    (("on", 120, "00000001000000000000007A", ARCHIVED_AT, 3, "000000010000000000000070", FAILED_EARLIER), 2,
     CRITICAL, "000000010000000000000070"),
    (("on", 120, "00000001000000000000007A", ARCHIVED_AT, 3, "00000001000000000000007B", FAILED_LATER), None,
     CRITICAL, "00000001000000000000007B"),
    (("on", 120, "00000001000000000000007A", ARCHIVED_AT, 3, "000000010000000000000070", FAILED_EARLIER), 3,
     OK, "120 WAL files archived"),
    (("on", 5, "000000010000000000000005", ARCHIVED_AT, 1, "000000010000000000000001", FAILED_EARLIER), 9,
     OK, "5 WAL files archived"),
])
def test_archiving(row, previous_failed, code, text):
    item = ckc.archiving_item(row, previous_failed)
    assert item.code == code and text in item.summary


class FakeDbError(Exception):
    pass


class FakeCursor:
    """Answers the program's queries by a fragment of their text; a fragment mapped to
    an exception raises it, as psycopg2 would for a denied or failed query."""

    def __init__(self, answers):
        self.answers = answers
        self.rows = None

    def execute(self, sql, params=None):
        for fragment, rows in self.answers.items():
            if fragment in sql:
                if isinstance(rows, Exception):
                    raise rows
                self.rows = rows
                return
        raise AssertionError(f"unexpected query {sql}")

    def fetchone(self):
        return self.rows[0] if self.rows else None

    def fetchall(self):
        return list(self.rows)


def pg_answers(**changes):
    answers = {
        "max_connections": [(12, 97)],
        "data_directory": [("/nonexistent/claude-kit-check-test",)],
        "ORDER BY xact_start": [],
        "idle in transaction": [],
        "blks_hit": [(990000, 10000)],
        "datfrozenxid": [("claude", 1000)],
        "n_dead_tup": [],
        "deadlocks": [(7,)],
        "pg_is_in_recovery": [(False,)],
        "pg_stat_replication": [],
        "pg_stat_archiver": [("off", 0, None, None, 0, None, None)],
    }
    answers.update(changes)
    return answers


def test_postgresql_items_all_ok_and_the_deadlock_baseline_kept():
    pg = config_section("postgresql")
    items, counters = ckc.postgresql_items(FakeCursor(pg_answers()), pg, {}, FakeDbError)
    named = by_name(items)
    assert list(named) == list(ckc.PG_ITEMS)
    assert named["disk"].code == UNKNOWN and "/nonexistent/claude-kit-check-test" in named["disk"].summary
    assert all(item.code == OK for name, item in named.items() if name != "disk")
    assert counters == {"deadlocks": 7, "archive_failed": 0}
    items, _state = ckc.postgresql_items(FakeCursor(pg_answers(deadlocks=[(12,)])), pg, counters, FakeDbError)
    assert by_name(items)["deadlocks"].code == CRITICAL and by_name(items)["deadlocks"].value == 5


def test_a_failing_query_makes_only_its_own_items_unknown():
    pg = config_section("postgresql")
    answers = pg_answers(pg_is_in_recovery=FakeDbError("permission denied for function pg_is_in_recovery\nHINT: x"))
    items, _state = ckc.postgresql_items(FakeCursor(answers), pg, {}, FakeDbError)
    named = by_name(items)
    for name in ("replication_lag_bytes", "replication_lag_seconds"):
        assert named[name].code == UNKNOWN
        assert named[name].summary == "cannot check: permission denied for function pg_is_in_recovery"
    assert named["connections"].code == OK and named["archiving"].code == OK


def test_disk_is_not_judged_for_a_server_on_another_host():
    pg = dict(config_section("postgresql"), host="db.example.internal")
    items, _state = ckc.postgresql_items(FakeCursor(pg_answers()), pg, {}, FakeDbError)
    assert by_name(items)["disk"].code == UNKNOWN and "run this check there" in by_name(items)["disk"].summary


def config_section(service):
    assert service == "postgresql"
    return {"host": "/var/run/postgresql", "port": 5432, "user": "claude_monitor", "dbname": "claude",
            "connect_timeout": 5, "thresholds": dict(PG_TH)}


def test_a_server_not_accepting_connections_leaves_every_other_item_unknown(monkeypatch):
    monkeypatch.setattr(ckc, "run_pg_isready", lambda pg: ckc.ready_item(2))
    items, state = ckc.check_postgresql(config_section("postgresql"), {}, NOW)
    assert items[0].code == CRITICAL and state is None
    assert [item.code for item in items[1:]] == [UNKNOWN] * len(ckc.PG_ITEMS)
    assert ckc.overall(item.code for item in items) == CRITICAL


def test_a_refused_login_is_unknown_not_ok(monkeypatch):
    fake = types.ModuleType("psycopg2")
    fake.Error = FakeDbError

    def connect(**_kwargs):
        raise FakeDbError('connection to server failed: FATAL:  password authentication failed for user "m"\n'
                          "DETAIL: more")

    fake.connect = connect
    monkeypatch.setitem(sys.modules, "psycopg2", fake)
    monkeypatch.setattr(ckc, "run_pg_isready", lambda pg: ckc.ready_item(0))
    items, state = ckc.check_postgresql(config_section("postgresql"), {}, NOW)
    assert items[0].code == OK and state is None
    assert {item.code for item in items[1:]} == {UNKNOWN}
    assert items[1].summary == ('cannot check: connection to server failed: FATAL: password authentication '
                                'failed for user "m"')
    assert ckc.overall(item.code for item in items) == UNKNOWN


# --- Redis ------------------------------------------------------------------------

def test_resp_commands_are_arrays_of_bulk_strings():
    assert ckc.resp_command("AUTH", "mon", "p@ss") == b"*3\r\n$4\r\nAUTH\r\n$3\r\nmon\r\n$4\r\np@ss\r\n"


@pytest.mark.parametrize("data, expected", [
    (b"+PONG\r\n", "PONG"),
    (b":42\r\n", 42),
    (b"$5\r\nhello\r\n", "hello"),
    (b"$-1\r\n", None),
    (b"*2\r\n+a\r\n:1\r\n", ["a", 1]),
])
def test_resp_replies(data, expected):
    assert ckc.read_reply(io.BytesIO(data)) == expected


def test_resp_errors_and_a_closed_connection():
    with pytest.raises(ckc.RedisReplyError, match="WRONGPASS invalid username-password pair"):
        ckc.read_reply(io.BytesIO(b"-WRONGPASS invalid username-password pair\r\n"))
    for data in (b"", b"+PO", b"$10\r\nshort\r\n"):
        with pytest.raises(ckc.Unreachable):
            ckc.read_reply(io.BytesIO(data))


def info_text(used=1000, maxmemory=10000, evicted=0, rejected=0, run_id="abc"):
    return (f"# Server\r\nrun_id:{run_id}\r\n\r\n# Memory\r\nused_memory:{used}\r\nmaxmemory:{maxmemory}\r\n"
            f"# Stats\r\nevicted_keys:{evicted}\r\nrejected_connections:{rejected}\r\n")


@pytest.mark.parametrize("used, code", [(7999, OK), (8000, WARNING), (9499, WARNING), (9500, CRITICAL)])
def test_redis_memory_percent_of_maxmemory(used, code):
    item = ckc.memory_item(ckc.parse_info(info_text(used=used)), REDIS_TH)
    assert item.code == code and item.value == pytest.approx(used / 100)


def test_redis_without_maxmemory_is_ok():
    item = ckc.memory_item(ckc.parse_info(info_text(used=10 ** 12, maxmemory=0)), REDIS_TH)
    assert item.code == OK and "no maxmemory limit" in item.summary and item.value is None


@pytest.mark.parametrize("previous, evicted, rejected, codes", [
    ({}, 10 ** 6, 50, (OK, OK)),
    ({"evicted_keys": 100, "rejected_connections": 5}, 1099, 5, (OK, OK)),
    ({"evicted_keys": 100, "rejected_connections": 5}, 1100, 6, (WARNING, WARNING)),
    ({"evicted_keys": 100, "rejected_connections": 5}, 100100, 15, (CRITICAL, CRITICAL)),
    ({"evicted_keys": 10 ** 6, "rejected_connections": 50}, 3, 0, (OK, OK)),
])
def test_redis_evictions_and_rejections_since_the_last_run(previous, evicted, rejected, codes):
    items = ckc.redis_info_items(ckc.parse_info(info_text(evicted=evicted, rejected=rejected)), previous, REDIS_TH)
    assert (items[1].name, items[2].name) == ("evicted", "rejected")
    assert (items[1].code, items[2].code) == codes


@pytest.mark.parametrize("error, code", [
    ("WRONGPASS invalid username-password pair or user is disabled.", UNKNOWN),
    ("NOPERM User mon has no permissions to run the 'ping' command", UNKNOWN),
    ("LOADING Redis is loading the dataset in memory", CRITICAL),
    ("ERR something else", UNKNOWN),
])
def test_redis_error_replies(error, code):
    assert ckc.redis_error_item(ckc.RedisReplyError(error)).code == code


class FakeRedisSocket:
    """A connection whose replies are scripted; what the program sends is kept."""

    def __init__(self, replies):
        self.replies = replies
        self.sent = b""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def sendall(self, data):
        self.sent += data

    def makefile(self, _mode):
        return io.BytesIO(self.replies)


def run_redis(monkeypatch, tmp_path, replies, password="s3cret-pass\n", state=None):
    cfg = config(tmp_path)["redis"]
    if password is not None:
        (tmp_path / "redis.pass").write_text(password)
    conn = FakeRedisSocket(replies)
    monkeypatch.setattr(ckc.socket, "create_connection", lambda *a, **k: conn)
    items, new_state = ckc.check_redis(cfg, state or {}, NOW)
    return items, new_state, conn


def test_redis_all_ok_authenticates_with_the_users_password(monkeypatch, tmp_path):
    info = info_text(evicted=7, rejected=2, run_id="r1").encode()
    replies = b"+OK\r\n+PONG\r\n" + b"$%d\r\n" % len(info) + info + b"\r\n"
    items, state, conn = run_redis(monkeypatch, tmp_path, replies)
    assert [(i.name, i.code) for i in items] == [("ping", OK), ("memory", OK), ("evicted", OK), ("rejected", OK)]
    assert conn.sent.startswith(ckc.resp_command("AUTH", "claude_monitor", "s3cret-pass"))
    assert state == {"origin": "r1", "counters": {"evicted_keys": 7, "rejected_connections": 2}}


def test_redis_wrong_password_is_unknown_and_the_password_is_never_shown(monkeypatch, tmp_path):
    items, state, _conn = run_redis(monkeypatch, tmp_path, b"-WRONGPASS invalid username-password pair\r\n")
    assert {item.code for item in items} == {UNKNOWN} and state is None
    assert "WRONGPASS" in items[0].summary
    assert all("s3cret" not in item.summary for item in items)


def test_redis_missing_or_empty_password_file_is_unknown(monkeypatch, tmp_path):
    items, _state, conn = run_redis(monkeypatch, tmp_path, b"", password=None)
    assert {item.code for item in items} == {UNKNOWN} and "redis.pass" in items[0].summary
    assert conn.sent == b""
    items, _state, _conn = run_redis(monkeypatch, tmp_path, b"", password="\n")
    assert {item.code for item in items} == {UNKNOWN} and "is empty" in items[0].summary


def test_redis_refused_is_critical_and_the_rest_unknown(monkeypatch, tmp_path):
    def refuse(*_args, **_kwargs):
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(ckc.socket, "create_connection", refuse)
    items, state = ckc.check_redis(config(tmp_path)["redis"], {}, NOW)
    assert items[0].code == CRITICAL and items[0].summary == "not answering (connection refused)"
    assert [item.code for item in items[1:]] == [UNKNOWN] * 3 and state is None


def test_redis_ping_must_answer_pong(monkeypatch, tmp_path):
    items, _state, _conn = run_redis(monkeypatch, tmp_path, b"+OK\r\n+NOPE\r\n")
    assert items[0].code == CRITICAL and "not PONG" in items[0].summary


# --- Nginx ------------------------------------------------------------------------

STUB = "Active connections: 291 \nserver accepts handled requests\n 16630948 16630946 31070465 \n" \
       "Reading: 6 Writing: 179 Waiting: 106 \n"


def test_stub_status_is_parsed():
    assert ckc.parse_stub_status(STUB) == {"active": 291, "accepts": 16630948, "handled": 16630946,
                                           "requests": 31070465, "reading": 6, "writing": 179, "waiting": 106}
    with pytest.raises(ValueError, match="not a stub_status page"):
        ckc.parse_stub_status("<html>404 Not Found</html>")


@pytest.mark.parametrize("active, code", [(499, OK), (500, WARNING), (899, WARNING), (900, CRITICAL)])
def test_active_connections(active, code):
    status = dict(ckc.parse_stub_status(STUB), active=active)
    assert ckc.active_item(status, NGINX_TH).code == code


def log_line(seconds_ago, status, extra=""):
    when = datetime.datetime.fromtimestamp(NOW - seconds_ago, datetime.timezone(datetime.timedelta(hours=1)))
    return (f'203.0.113.9 - - [{when.strftime("%d/%b/%Y:%H:%M:%S %z")}] "GET /api/usage HTTP/1.1" {status} 512 '
            f'"-" "curl/8.0"{extra}')


def test_log_times_with_their_offset():
    assert ckc.parse_log_time("02/Dec/2026:12:00:00 +0000") == NOW
    assert ckc.parse_log_time("02/Dec/2026:13:00:00 +0100") == NOW
    assert ckc.parse_log_time("02/Dec/2026:06:30:00 -0530") == NOW
    assert ckc.parse_log_time("02/Foo/2026:12:00:00 +0000") is None
    assert ckc.parse_log_time("31/Feb/2026:12:00:00 +0000") is None


def test_access_lines_combined_and_with_extra_fields():
    assert ckc.parse_access_line(log_line(0, 502)) == (NOW, 502)
    assert ckc.parse_access_line(log_line(0, 200, ' 0.013 "upstream=127.0.0.1:5000"')) == (NOW, 200)
    assert ckc.parse_access_line('::1 - alice [02/Dec/2026:12:00:00 +0000] "GET / HTTP/1.1" 404 0') == (NOW, 404)
    assert ckc.parse_access_line("garbage") is None


def test_the_5xx_window_counts_the_last_interval_only():
    lines = [log_line(0, 500), log_line(299, 503), log_line(300, 200),  # inside: exactly 300 s old counts
             log_line(301, 500), log_line(355, 500), "not a log line"]
    assert ckc.http_5xx_counts(lines, NOW, 300) == (3, 2)


def test_the_5xx_window_stops_reading_well_before_the_window():
    def lines():
        yield log_line(10, 500)
        yield log_line(300 + ckc.LOG_SLACK_SECONDS + 1, 200)
        raise AssertionError("read past the window")

    assert ckc.http_5xx_counts(lines(), NOW, 300) == (1, 1)


@pytest.mark.parametrize("requests, errors, code", [
    (19, 19, OK), (100, 0, OK), (10000, 99, OK), (100, 1, WARNING), (100, 4, WARNING), (100, 5, CRITICAL),
    (20, 20, CRITICAL),
])
def test_5xx_share(requests, errors, code):
    item = ckc.http_5xx_item(requests, errors, 300, NGINX_TH)
    assert item.code == code
    if requests < NGINX_TH["http_5xx_min_requests"]:
        assert "too few requests" in item.summary and item.value is None


def test_the_log_is_read_backwards_across_blocks(tmp_path):
    path = tmp_path / "access.log"
    lines = [f"line {n} " + "x" * n for n in range(40)]
    path.write_bytes(("\n".join(lines) + "\n").encode())
    with open(path, "rb") as handle:
        assert list(ckc.lines_backwards(handle, block_size=7)) == lines[::-1]
    path.write_bytes(b"first\nlast without newline")
    with open(path, "rb") as handle:
        assert list(ckc.lines_backwards(handle, block_size=4)) == ["last without newline", "first"]
    path.write_bytes(b"")
    with open(path, "rb") as handle:
        assert not list(ckc.lines_backwards(handle))


def test_the_rotated_log_follows_the_current_one(tmp_path):
    path = tmp_path / "access.log"
    path.write_text(log_line(5, 500) + "\n")
    (tmp_path / "access.log.1").write_text(log_line(200, 500) + "\n" + log_line(100, 200) + "\n")
    assert ckc.http_5xx_counts(ckc.log_lines_newest_first(str(path)), NOW, 300) == (3, 2)


def nginx_run(monkeypatch, tmp_path, answer, state=None, log=True):
    cfg = config(tmp_path)["nginx"]
    if log:
        (tmp_path / "access.log").write_text("".join(log_line(1, 200) + "\n" for _line in range(30)))

    def http_get(_url, _timeout):
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(ckc, "http_get", http_get)
    return ckc.check_nginx(cfg, state or {}, NOW)


def test_nginx_all_ok_and_dropped_connections_since_the_last_run(monkeypatch, tmp_path):
    items, state = nginx_run(monkeypatch, tmp_path, (200, STUB))
    assert [(i.name, i.code) for i in items] == [
        ("status", OK), ("active", OK), ("dropped", OK), ("http_5xx_share", OK)]
    assert state == {"counters": {"dropped": 2}}
    items, _state = nginx_run(monkeypatch, tmp_path, (200, STUB), state={"counters": {"dropped": 1}})
    assert by_name(items)["dropped"].code == WARNING
    items, _state = nginx_run(monkeypatch, tmp_path, (200, STUB), state={"counters": {"dropped": 10 ** 6}})
    assert by_name(items)["dropped"].code == OK  # nginx restarted: new baseline


@pytest.mark.parametrize("answer, code", [
    (ckc.Unreachable("connection refused"), CRITICAL), ((404, "<html>Not Found</html>"), UNKNOWN),
    ((403, "Forbidden"), UNKNOWN), ((200, "hello"), UNKNOWN),
])
def test_nginx_status_page_failures(monkeypatch, tmp_path, answer, code):
    items, _state = nginx_run(monkeypatch, tmp_path, answer)
    named = by_name(items)
    assert named["status"].code == code and named["active"].code == UNKNOWN and named["dropped"].code == UNKNOWN
    assert named["http_5xx_share"].code == OK  # the log is read all the same


def test_an_unreadable_access_log_is_unknown(monkeypatch, tmp_path):
    items, _state = nginx_run(monkeypatch, tmp_path, (200, STUB), log=False)
    item = by_name(items)["http_5xx_share"]
    assert item.code == UNKNOWN and "access.log" in item.summary


# --- the daemon -------------------------------------------------------------------

def health(**changes):
    body = {"status": "ok", "database": "postgresql", "redis": "ok", "features": {}, "version": "1.0.0",
            "pending_sync": 0}
    body.update(changes)
    return body


@pytest.mark.parametrize("body, codes", [
    (health(), (OK, OK, OK)),
    (health(database="sqlite", pending_sync=3), (CRITICAL, OK, WARNING)),
    (health(status="error", database="unavailable", pending_sync=None), (CRITICAL, OK, UNKNOWN)),
    (health(redis="down"), (OK, WARNING, OK)),
    (health(redis="disabled"), (OK, OK, OK)),
])
def test_daemon_health_fields(body, codes):
    items = ckc.daemon_health_items(body, 0, DAEMON_TH)
    assert tuple(item.code for item in items) == codes
    if body["database"] == "sqlite":
        assert items[0].summary == "serving from the SQLite fallback"
    if body["redis"] == "down":
        assert "cache degraded" in items[1].summary


@pytest.mark.parametrize("previous, pending, code", [
    (None, 0, OK), (None, 500, OK), (0, 0, OK), (5, 5, OK), (5, 4, OK), (0, 1, WARNING), (5, 999, WARNING),
    (998, 999, WARNING), (None, 1000, CRITICAL), (2000, 1000, CRITICAL),
])
def test_pending_sync_warns_when_growing_and_is_critical_at_the_limit(previous, pending, code):
    item = ckc.daemon_health_items(health(pending_sync=pending), previous, DAEMON_TH)[2]
    assert item.code == code and item.value == pending


def test_container_state():
    running = {"Id": "c1", "RestartCount": 0, "State": {"Status": "running", "StartedAt": "2026-12-02T06:00:00.1Z",
                                                        "Health": {"Status": "healthy"}}}
    assert ckc.container_item(running, "claude-daemon").code == OK
    exited = {"State": {"Status": "exited", "ExitCode": 137}}
    item = ckc.container_item(exited, "claude-daemon")
    assert item.code == CRITICAL and item.summary == "claude-daemon is exited (exit code 137)"


def test_health_answers():
    item, body = ckc.health_item(503, json.dumps(health(status="error", database="unavailable")))
    assert item.code == CRITICAL and body["database"] == "unavailable"
    item, body = ckc.health_item(200, json.dumps(health()))
    assert item.code == OK and body["status"] == "ok"
    for status, text in ((200, "<html>"), (200, "[1]"), (500, "{}")):
        item, body = ckc.health_item(status, text)
        assert item.code == UNKNOWN and body is None


def daemon_run(monkeypatch, tmp_path, inspect, answer, state=None):
    if isinstance(inspect, dict):
        monkeypatch.setattr(ckc, "docker_inspect", lambda container, timeout: (inspect, None))
    else:
        monkeypatch.setattr(ckc, "docker_inspect", lambda container, timeout: (None, inspect))

    def http_get(_url, _timeout, _ca_file=None):
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(ckc, "http_get", http_get)
    return ckc.check_daemon(config(tmp_path)["daemon"], state or {}, NOW)


RUNNING = {"Id": "c1", "RestartCount": 4, "State": {"Status": "running", "StartedAt": "2026-12-02T06:00:00Z"}}


def test_daemon_all_ok_then_restarts_since_the_last_run(monkeypatch, tmp_path):
    items, state = daemon_run(monkeypatch, tmp_path, RUNNING, (200, json.dumps(health(pending_sync=2))))
    assert [(i.name, i.code) for i in items] == [
        ("container", OK), ("restarts", OK), ("health", OK), ("database", OK), ("redis", OK), ("pending_sync", OK)]
    assert state == {"origin": "c1", "counters": {"restarts": 4, "pending_sync": 2}}
    for previous, code in ((3, WARNING), (2, WARNING), (1, CRITICAL)):
        items, _state = daemon_run(monkeypatch, tmp_path, RUNNING, (200, json.dumps(health())),
                                   state={"origin": "c1", "counters": {"restarts": previous}})
        assert by_name(items)["restarts"].code == code
    items, _state = daemon_run(monkeypatch, tmp_path, RUNNING, (200, json.dumps(health())),
                               state={"origin": "old-container", "counters": {"restarts": 0}})
    assert by_name(items)["restarts"].code == OK  # recreated container: new baseline


def test_daemon_health_refused_while_running_is_critical(monkeypatch, tmp_path):
    items, _state = daemon_run(monkeypatch, tmp_path, RUNNING, ckc.Unreachable("connection refused"))
    named = by_name(items)
    assert named["health"].code == CRITICAL and named["health"].summary == "not answering (connection refused)"
    assert {named[n].code for n in ("database", "redis", "pending_sync")} == {UNKNOWN}


def test_daemon_container_stopped_is_critical(monkeypatch, tmp_path):
    stopped = {"Id": "c1", "RestartCount": 4, "State": {"Status": "exited", "ExitCode": 1}}
    items, _state = daemon_run(monkeypatch, tmp_path, stopped, AssertionError("must not be asked"))
    named = by_name(items)
    assert named["container"].code == CRITICAL
    assert {named[n].code for n in ("health", "database", "redis", "pending_sync")} == {UNKNOWN}


def test_daemon_without_docker_still_checks_health(monkeypatch, tmp_path):
    failure = ckc.Item("container", UNKNOWN, "cannot check: docker inspect: permission denied")
    down = json.dumps(health(status="error", database="unavailable"))
    items, _state = daemon_run(monkeypatch, tmp_path, failure, (503, down))
    named = by_name(items)
    assert named["container"].code == UNKNOWN and named["restarts"].code == UNKNOWN
    assert named["health"].code == CRITICAL and named["database"].code == CRITICAL


def test_docker_inspect_failures(monkeypatch):
    def fake_run(stderr, returncode=1):
        return lambda *a, **k: types.SimpleNamespace(returncode=returncode, stdout="", stderr=stderr)

    monkeypatch.setattr(ckc.subprocess, "run", fake_run("Error: No such object: claude-daemon\n"))
    assert ckc.docker_inspect("claude-daemon", 5)[1].code == CRITICAL
    monkeypatch.setattr(ckc.subprocess, "run", fake_run("permission denied while trying to connect to the "
                                                        "Docker daemon socket\n"))
    assert ckc.docker_inspect("claude-daemon", 5)[1].code == UNKNOWN

    def missing(*_a, **_k):
        raise FileNotFoundError("docker")

    monkeypatch.setattr(ckc.subprocess, "run", missing)
    item = ckc.docker_inspect("claude-daemon", 5)[1]
    assert item.code == UNKNOWN and "docker is not installed" in item.summary


# --- backups ----------------------------------------------------------------------

def backup_state(hours_ago, ok=True, last_success_hours_ago=None):
    state = {"ok": ok, "method": "dump", "end_epoch": NOW - hours_ago * 3600}
    if ok:
        state["last_success_epoch"] = NOW - hours_ago * 3600
    else:
        state["error"] = "pg_dump exited 1: connection refused"
        state["last_success_epoch"] = None if last_success_hours_ago is None else \
            NOW - last_success_hours_ago * 3600
    return state


def drill_state(days_ago, ok=True):
    when = datetime.datetime.fromtimestamp(NOW - days_ago * 86400, datetime.UTC)
    methods = {"dump": {"ok": True}, "pgbackrest": {"ok": ok, "error": None if ok else "row counts differ"}}
    return {"ok": ok, "time": when.strftime("%Y-%m-%dT%H:%M:%SZ"), "methods": methods}


@pytest.mark.parametrize("hours, code", [(24.99, OK), (25, WARNING), (25.99, WARNING), (26, CRITICAL)])
def test_backup_age(hours, code):
    states = {"dump": backup_state(hours), "pgbackrest": backup_state(1), "drill": drill_state(1)}
    items = ckc.backup_items(states, NOW, BACKUP_TH, ["dump", "pgbackrest"], True)
    assert [item.code for item in items] == [code, OK, OK]
    assert items[0].value == pytest.approx(hours * 3600)


def test_no_good_backup_is_critical():
    states = {"dump": None, "pgbackrest": backup_state(2, ok=False), "drill": drill_state(1)}
    items = by_name(ckc.backup_items(states, NOW, BACKUP_TH, ["dump", "pgbackrest"], True))
    assert items["dump"].code == CRITICAL and items["dump"].summary == "no good backup"
    assert items["pgbackrest"].code == CRITICAL and items["pgbackrest"].summary == "no good backup"


def test_a_failed_run_is_judged_by_the_last_good_backup_and_says_it_failed():
    states = {"dump": backup_state(1, ok=False, last_success_hours_ago=20)}
    item = ckc.backup_items(states, NOW, BACKUP_TH, ["dump"], False)[0]
    assert item.code == OK and "the last run failed (pg_dump exited 1" in item.summary
    assert item.value == 20 * 3600


def test_a_dump_recorded_ok_mid_run_counts_by_the_files_time():
    # claude-kit-backup records {"ok": true} before its retention step, without times yet.
    states = {"dump": {"ok": True, "method": "dump", "name": "x.dump", "_mtime": NOW - 60}}
    assert ckc.backup_items(states, NOW, BACKUP_TH, ["dump"], False)[0].code == OK


@pytest.mark.parametrize("state, code, text", [
    (None, WARNING, "no restore drill yet"),
    ("fresh", OK, "last drill passed"),
    ("7.9", OK, "last drill passed"),
    ("8", WARNING, "last drill passed 8d ago"),
    ("failed", CRITICAL, "the last restore drill failed (pgbackrest: row counts differ)"),
])
def test_the_restore_drill(state, code, text):
    drill = {None: None, "fresh": drill_state(0.1), "7.9": drill_state(7.9), "8": drill_state(8),
             "failed": drill_state(1, ok=False)}[state]
    item = ckc.backup_items({"drill": drill}, NOW, BACKUP_TH, [], True)[0]
    assert item.name == "drill" and item.code == code and text in item.summary


@pytest.mark.parametrize("backups_began_days_ago, code", [(1, OK), (7.9, OK), (8, WARNING), (None, WARNING)])
def test_before_the_first_drill_it_is_overdue_only_after_the_warning_age_of_backups(backups_began_days_ago, code):
    dump = {"ok": True, "method": "dump", "end_epoch": NOW - 3600, "last_success_epoch": NOW - 3600}
    if backups_began_days_ago is not None:
        dump["first_success_epoch"] = NOW - backups_began_days_ago * 86400
    item = ckc.backup_items({"dump": dump, "drill": None}, NOW, BACKUP_TH, ["dump"], True)[1]
    assert item.name == "drill" and item.code == code and "no restore drill yet" in item.summary


def test_the_backup_program_keeps_the_first_success_across_runs(tmp_path, capsys):
    ckb = load(BACKUP_PROGRAM, "claude_kit_backup")
    cfg = {"state_dir": str(tmp_path), "textfile_dir": None}

    def fail():
        raise ckb.BackupError("pg_dump exited 1")

    ckb.timed_run(cfg, "dump", "dump", fail)
    assert json.loads((tmp_path / "dump-last.json").read_text())["first_success_epoch"] is None
    ckb.timed_run(cfg, "dump", "dump", lambda: {"name": "a.dump"})
    first = json.loads((tmp_path / "dump-last.json").read_text())["first_success_epoch"]
    assert isinstance(first, int)
    ckb.timed_run(cfg, "dump", "dump", fail)
    ckb.timed_run(cfg, "dump", "dump", lambda: {"name": "b.dump"})
    assert json.loads((tmp_path / "dump-last.json").read_text())["first_success_epoch"] == first
    capsys.readouterr()


def test_no_drill_item_when_drills_are_not_configured():
    assert ckc.backup_items({}, NOW, BACKUP_TH, ["dump"], False)[0].name == "dump"
    assert len(ckc.backup_items({}, NOW, BACKUP_TH, ["dump"], False)) == 1


def test_the_backup_programs_own_state_files_are_understood(tmp_path, capsys):
    """State files written by claude-kit-backup itself, so the field names cannot drift apart."""
    ckb = load(BACKUP_PROGRAM, "claude_kit_backup")
    cfg = {"state_dir": str(tmp_path), "textfile_dir": None}
    ckb.timed_run(cfg, "dump", "dump", lambda: {"name": "claude_20261202T020000Z.dump"})

    def fail():
        raise ckb.BackupError("pgbackrest exited 56: no archive")

    ckb.timed_run(cfg, "pgbackrest", "pgbackrest", fail)
    capsys.readouterr()
    states = ckc.read_backup_states(str(tmp_path), ["dump", "pgbackrest"], True)
    items = by_name(ckc.backup_items(states, ckc.time.time(), BACKUP_TH, ["dump", "pgbackrest"], True))
    assert items["dump"].code == OK and items["dump"].value <= 60
    assert items["pgbackrest"].code == CRITICAL and items["pgbackrest"].summary == "no good backup"
    # No drill yet, and backups began just now: the first drill is not due.
    assert items["drill"].code == OK and "backups began" in items["drill"].summary
    # A failure after a success: judged by the success, and the failure said.
    ckb.timed_run(cfg, "dump", "dump", fail)
    capsys.readouterr()
    states = ckc.read_backup_states(str(tmp_path), ["dump"], False)
    item = ckc.backup_items(states, ckc.time.time(), BACKUP_TH, ["dump"], False)[0]
    assert item.code == OK and "the last run failed (pgbackrest exited 56: no archive)" in item.summary


def test_unreadable_backup_state(tmp_path):
    bad = tmp_path / "dump-last.json"
    bad.write_text("{not json")
    states = ckc.read_backup_states(str(tmp_path), ["dump"], False)
    assert ckc.backup_items(states, NOW, BACKUP_TH, ["dump"], False)[0].code == UNKNOWN
    section = config(tmp_path)["backup"]
    section["state_dir"] = str(tmp_path / "missing")
    items, _state = ckc.check_backup(section, {}, NOW)
    assert [item.code for item in items] == [UNKNOWN] * 3
    assert "cannot read the backup state directory" in items[0].summary


# --- certificates -----------------------------------------------------------------

def make_certificate(not_after, issuer_key=None, name="host"):
    """A PEM certificate expiring at not_after (a datetime), made with the
    cryptography package (ansible-core's own dependency)."""
    from cryptography import x509  # pylint: disable=import-outside-toplevel
    from cryptography.hazmat.primitives import hashes, serialization  # pylint: disable=import-outside-toplevel
    from cryptography.hazmat.primitives.asymmetric import ec  # pylint: disable=import-outside-toplevel
    from cryptography.x509.oid import NameOID  # pylint: disable=import-outside-toplevel

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)).not_valid_after(not_after)
            .sign(issuer_key or key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def in_days(days):
    return datetime.datetime.fromtimestamp(NOW + days * 86400, datetime.UTC).replace(microsecond=0)


@pytest.mark.parametrize("when", [
    datetime.datetime(2027, 1, 3, 11, 21, 36, tzinfo=datetime.UTC),   # UTCTime (before 2050)
    datetime.datetime(2051, 6, 1, 0, 0, 0, tzinfo=datetime.UTC),      # GeneralizedTime (2050 and later)
])
def test_the_expiry_is_read_from_the_certificate_itself(when):
    assert ckc.pem_not_after(make_certificate(when)) == when.timestamp()


def test_a_file_with_a_chain_expires_with_its_first_certificate_to_expire():
    chain = make_certificate(in_days(300), name="leaf") + make_certificate(in_days(40), name="intermediate")
    assert ckc.pem_not_after(chain) == pytest.approx(NOW + 40 * 86400)


@pytest.mark.parametrize("days, code", [
    (397, OK), (21.01, OK), (21, WARNING), (7.01, WARNING), (7, CRITICAL), (0.5, CRITICAL), (-3, CRITICAL),
])
def test_days_until_expiry_against_the_thresholds(tmp_path, days, code):
    path = tmp_path / "server.crt"
    path.write_text(make_certificate(in_days(days)))
    item = ckc.certificate_item("server", str(path), NOW, CERT_TH)
    assert item.code == code and item.value == pytest.approx(days * 86400, abs=1)
    assert (item.warning, item.critical) == (21 * 86400, 7 * 86400)
    if code in (WARNING, CRITICAL):
        assert item.breach == ("<= 7d" if code == CRITICAL else "<= 21d")


def test_the_summary_says_when_it_expires_or_expired(tmp_path):
    path = tmp_path / "server.crt"
    path.write_text(make_certificate(datetime.datetime(2027, 1, 3, 11, 21, tzinfo=datetime.UTC)))
    item = ckc.certificate_item("server", str(path), NOW, CERT_TH)
    assert item.summary == f"expires in 31d 23h (2027-01-03 11:21 UTC), {path}"
    path.write_text(make_certificate(datetime.datetime(2026, 11, 29, 12, 0, tzinfo=datetime.UTC)))
    item = ckc.certificate_item("server", str(path), NOW, CERT_TH)
    assert item.code == CRITICAL and item.summary.startswith("expired 3d ago (2026-11-29 12:00 UTC)")


def test_a_missing_certificate_is_critical_and_one_that_cannot_be_read_unknown(tmp_path):
    missing = ckc.certificate_item("ca", str(tmp_path / "ca.crt"), NOW, CERT_TH)
    assert missing.code == CRITICAL and missing.summary.endswith("ca.crt is missing")
    for text, reason in (("not a certificate\n", "no PEM certificate in it"),
                         ("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n", "bad DER length"),
                         ("-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n", "bad base64")):
        (tmp_path / "bad.crt").write_text(text)
        item = ckc.certificate_item("server", str(tmp_path / "bad.crt"), NOW, CERT_TH)
        assert item.code == UNKNOWN and reason in item.summary, item.summary
    lines = make_certificate(in_days(100)).splitlines()
    (tmp_path / "cut.crt").write_text("\n".join(lines[:2] + lines[-1:]) + "\n")  # one line of base64 only
    item = ckc.certificate_item("server", str(tmp_path / "cut.crt"), NOW, CERT_TH)
    assert item.code == UNKNOWN and "truncated DER" in item.summary
    (tmp_path / "dir.crt").mkdir()
    assert ckc.certificate_item("server", str(tmp_path / "dir.crt"), NOW, CERT_TH).code == UNKNOWN


def test_the_certificate_check_reads_every_configured_file(tmp_path):
    (tmp_path / "server.crt").write_text(make_certificate(in_days(10)))
    (tmp_path / "ca.crt").write_text(make_certificate(in_days(3650)))
    items, state = ckc.check_certificate(config(tmp_path)["certificate"], {}, NOW)
    assert [(item.name, item.code) for item in items] == [("server", WARNING), ("ca", OK)] and state is None
    assert ckc.service_summary("certificate", items).startswith("server expires in 10d (")


def test_the_certificate_check_from_the_command_line(tmp_path, capsys):
    (tmp_path / "server.crt").write_text(make_certificate(in_days(3650)))
    (tmp_path / "ca.crt").write_text(make_certificate(in_days(3650)))
    path = write_config(tmp_path, config(tmp_path, checks=["certificate"]))
    assert ckc.main(["--config", path, "--no-textfile", "all"]) == 0
    assert capsys.readouterr().out.startswith("CERTIFICATE OK - all 2 checks OK; server expires in ")
    # A warning threshold above the days left: WARNING, exit 1, in days.
    assert ckc.main(["--config", path, "--no-textfile", "--json", "--threshold",
                     "certificate.expiry_warning_days=4000", "certificate"]) == 1
    checks = json.loads(capsys.readouterr().out)["services"][0]["checks"]
    assert [(c["name"], c["state"], c["warning"]) for c in checks] == [("server", "WARNING", 4000 * 86400),
                                                                         ("ca", "WARNING", 4000 * 86400)]


def test_certificate_files_must_be_named_paths(tmp_path):
    cfg = config(tmp_path)
    cfg["certificate"]["files"] = ["/etc/claude-kit/tls/server.crt"]
    with pytest.raises(ckc.UsageError, match=r"certificate\.files must map names to files"):
        ckc.validate(cfg, ["certificate"], "check.json")
    del cfg["certificate"]["thresholds"]["expiry_critical_days"]
    cfg["certificate"]["files"] = {"server": "/x"}
    with pytest.raises(ckc.UsageError, match=r"missing key certificate\.thresholds\.expiry_critical_days$"):
        ckc.validate(cfg, ["certificate"], "check.json")


# --- outputs ----------------------------------------------------------------------

def test_the_summary_line_names_the_items_that_are_not_ok():
    items = [ckc.ready_item(0), ckc.connections_item(96, 97, PG_TH), ckc.cache_hit_item(99000, 1000, PG_TH),
             ckc.idle_in_transaction_item([412, 3], PG_TH)]
    text = ckc.render_text([("postgresql", items)])
    assert text.splitlines()[0] == ("POSTGRESQL CRITICAL - connections 96/97 (99%) >= 95%; "
                                    "idle in transaction 1 session for 412s >= 300s")


def test_the_summary_line_puts_the_worst_first():
    items = [ckc.cache_hit_item(9500, 500, PG_TH), ckc.Item("disk", UNKNOWN, "cannot read"),
             ckc.wraparound_item("claude", 10 ** 9, PG_TH)]
    assert ckc.service_summary("postgresql", items) == (
        "wraparound datfrozenxid age 1000000000 (database claude) >= 1000000000; disk cannot read; "
        "cache hit 95% of 10000 blocks <= 95%")


def test_the_summary_line_when_all_is_ok_gives_the_count_and_key_values():
    items = [ckc.ready_item(0), ckc.connections_item(12, 97, PG_TH), ckc.wraparound_item("claude", 5, PG_TH)]
    assert ckc.service_summary("postgresql", items) == "all 3 checks OK; connections 12/97 (12%)"


def test_items_failing_for_one_reason_are_named_once():
    items = [ckc.ready_item(2)] + ckc.not_checked(ckc.PG_ITEMS, "not checked: the server is not accepting connections")
    assert ckc.service_summary("postgresql", items) == (
        "ready not accepting connections (no response); "
        f"{len(ckc.PG_ITEMS)} checks UNKNOWN: not checked: the server is not accepting connections")
    two = ckc.not_checked(("active", "dropped"), "not checked: x")
    assert ckc.service_summary("nginx", two) == "active, dropped: not checked: x"


def test_one_indented_line_per_check_with_its_thresholds():
    lines = ckc.render_text([("postgresql", [ckc.connections_item(12, 97, PG_TH), ckc.ready_item(0)])]).splitlines()
    assert lines[1] == "  connections OK 12/97 (12%) warn 80% crit 95%"
    assert lines[2] == "  ready OK accepting connections"


def test_a_multi_line_error_is_folded_onto_one_line():
    assert ckc.Item("x", UNKNOWN, "FATAL:  no\nDETAIL:  more").summary == "FATAL: no DETAIL: more"


@pytest.mark.parametrize("value, unit, text", [
    (412, "s", "412s"), (1800, "s", "30m"), (90000, "s", "25h"), (93784, "s", "26h 3m"), (691200, "s", "8d"),
    (0.95, "ratio", "95%"), (0.9312, "ratio", "93.12%"), (16777216, "bytes", "16 MiB"), (12.345, "%", "12.3%"),
    (500000000, "count", "500000000"), (None, "%", "n/a"),
])
def test_values_for_people(value, unit, text):
    assert ckc.fmt(value, unit) == text


def test_the_json_document():
    results = [("postgresql", [ckc.connections_item(12, 97, PG_TH),
                               ckc.Item("cache_hit", OK, "too few reads", float("nan"), "ratio", 0.95, 0.9)]),
               ("backup", [ckc.Item("dump", UNKNOWN, "cannot read")])]
    doc = json.loads(ckc.render_json("db1", results))
    assert (doc["host"], doc["state"], doc["code"]) == ("db1", "UNKNOWN", 3)
    assert [s["service"] for s in doc["services"]] == ["postgresql", "backup"]
    assert doc["services"][0]["state"] == "OK" and doc["services"][0]["summary"].startswith("all 2 checks OK")
    assert doc["services"][0]["checks"][0] == {
        "name": "connections", "state": "OK", "code": 0, "value": 1200 / 97, "unit": "%", "warning": 80,
        "critical": 95, "summary": "12/97 (12%)"}
    assert doc["services"][0]["checks"][1]["value"] is None  # NaN is no JSON
    assert doc["services"][1]["checks"][0]["value"] is None


def test_the_textfile():
    items = [ckc.connections_item(12, 100, PG_TH), ckc.Item("disk", UNKNOWN, "no")]
    text = ckc.render_textfile("postgresql", items, 1796212800.5)
    lines = text.splitlines()
    assert 'claude_kit_check_state{service="postgresql",check="connections"} 0' in lines
    assert 'claude_kit_check_state{service="postgresql",check="disk"} 3' in lines
    assert 'claude_kit_check_value{service="postgresql",check="connections"} 12' in lines
    assert not any(line.startswith('claude_kit_check_value{service="postgresql",check="disk"}') for line in lines)
    assert 'claude_kit_check_service_state{service="postgresql"} 3' in lines
    assert 'claude_kit_check_last_run_timestamp_seconds{service="postgresql"} 1796212800.5' in lines
    for metric in ("claude_kit_check_state", "claude_kit_check_value", "claude_kit_check_service_state",
                   "claude_kit_check_last_run_timestamp_seconds"):
        assert f"# TYPE {metric} gauge" in lines and any(line.startswith(f"# HELP {metric} ") for line in lines)
    assert text.endswith("\n")


def test_label_values_are_escaped():
    assert ckc.escape_label('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    text = ckc.render_textfile("x", [ckc.Item('we"ird\\\n', OK, "")], 1)
    assert 'check="we\\"ird\\\\\\n"} 0' in text


def test_atomic_writes_leave_the_mode_and_no_temporary_file(tmp_path):
    target = tmp_path / "claude_kit_check_x.prom"
    ckc.write_atomic(str(target), "a 1\n", 0o644)
    assert target.read_text() == "a 1\n" and (target.stat().st_mode & 0o777) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "x.json"
    target.write_text("old")

    with pytest.raises(TypeError):
        ckc.write_atomic(str(target), 42, 0o640)  # not text: the write fails after the temp file exists
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["x.json"]


# --- configuration and command line ----------------------------------------------

def test_threshold_overrides():
    assert ckc.parse_overrides(["postgresql.connections_critical=50", "nginx.http_5xx_warning=0.02"]) == {
        ("postgresql", "connections_critical"): 50, ("nginx", "http_5xx_warning"): 0.02}
    assert ckc.parse_overrides([]) == {}


@pytest.mark.parametrize("text, message", [
    ("postgresql.connection_critical=50", "unknown threshold postgresql.connection_critical"),
    ("mysql.connections_critical=50", "unknown threshold mysql.connections_critical"),
    ("connections_critical=50", "expected SERVICE.NAME=VALUE"),
    ("postgresql.connections_critical", "expected SERVICE.NAME=VALUE"),
    ("postgresql.connections_critical=lots", "'lots' is not a number"),
    ("postgresql.connections_critical=nan", "not a finite number"),
])
def test_bad_threshold_overrides_are_usage_errors_naming_them(text, message):
    with pytest.raises(ckc.UsageError, match=message.replace(".", r"\.")):
        ckc.parse_overrides([text])


def test_an_override_replaces_the_configured_threshold(tmp_path):
    cfg = config(tmp_path)
    ckc.apply_overrides(cfg, ckc.parse_overrides(["postgresql.connections_critical=50"]))
    assert cfg["postgresql"]["thresholds"]["connections_critical"] == 50
    assert ckc.connections_item(50, 100, cfg["postgresql"]["thresholds"]).code == CRITICAL


@pytest.mark.parametrize("remove, message", [
    (("postgresql",), "missing key postgresql"),
    (("postgresql", "port"), "missing key postgresql.port"),
    (("postgresql", "thresholds"), "missing key postgresql.thresholds"),
    (("postgresql", "thresholds", "disk_warning"), "missing key postgresql.thresholds.disk_warning"),
    (("backup", "methods"), "missing key backup.methods"),
])
def test_config_errors_name_the_missing_key(tmp_path, remove, message):
    cfg = config(tmp_path)
    section = cfg
    for key in remove[:-1]:
        section = section[key]
    del section[remove[-1]]
    with pytest.raises(ckc.UsageError, match=message.replace(".", r"\.") + "$"):
        ckc.validate(cfg, ["postgresql", "backup"], "check.json")


def test_config_errors_name_a_value_of_the_wrong_kind(tmp_path):
    cfg = config(tmp_path)
    cfg["redis"]["thresholds"]["memory_warning"] = "80"
    with pytest.raises(ckc.UsageError, match=r"redis\.thresholds\.memory_warning must be a number"):
        ckc.validate(cfg, ["redis"], "check.json")
    ckc.validate(cfg, ["postgresql"], "check.json")  # only the services to run are validated


def test_all_runs_the_configured_checks_in_order(tmp_path):
    cfg = config(tmp_path, checks=["backup", "nginx"])
    assert ckc.resolve_services(cfg, "all", "c") == ["backup", "nginx"]
    assert ckc.resolve_services(cfg, "redis", "c") == ["redis"]
    del cfg["checks"]
    with pytest.raises(ckc.UsageError, match="missing key checks"):
        ckc.resolve_services(cfg, "all", "c")
    with pytest.raises(ckc.UsageError, match="unknown service 'mysql'"):
        ckc.resolve_services(config(tmp_path, checks=["mysql"]), "all", "c")
    with pytest.raises(ckc.UsageError, match="checks must be a list"):
        ckc.resolve_services(config(tmp_path, checks="postgresql"), "all", "c")


def test_all_with_no_checks_on_this_host_is_ok(tmp_path, capsys):
    path = write_config(tmp_path, config(tmp_path, checks=[]))
    assert ckc.main(["--config", path, "all"]) == 0
    assert capsys.readouterr().out == "CLAUDE-KIT-CHECK OK - no checks configured on this host (checks is empty)\n"
    assert ckc.main(["--config", path, "--json", "all"]) == 0
    assert json.loads(capsys.readouterr().out)["services"] == []


def fake_checks(monkeypatch, codes_by_service):
    """Replace the services' checks by ones answering the given codes and counting their runs."""
    def make(service, codes):
        def check(_section, state, _now):
            runs = state.get("counters", {}).get("runs", 0) + 1
            return [ckc.Item(f"c{n}", code, f"{service} {n}", n, "count") for n, code in enumerate(codes)], \
                {"counters": {"runs": runs}}
        return check

    monkeypatch.setattr(ckc, "CHECKS", {service: make(service, codes) for service, codes in codes_by_service.items()})


@pytest.mark.parametrize("codes, exit_code", [
    ({"postgresql": [OK], "backup": [OK]}, 0),
    ({"postgresql": [OK, WARNING], "backup": [OK]}, 1),
    ({"postgresql": [WARNING], "backup": [UNKNOWN]}, 3),
    ({"postgresql": [UNKNOWN], "backup": [CRITICAL, OK]}, 2),
])
def test_the_exit_code_is_the_worst_state_in_nagios_order(monkeypatch, tmp_path, capsys, codes, exit_code):
    fake_checks(monkeypatch, codes)
    path = write_config(tmp_path, config(tmp_path))
    assert ckc.main(["--config", path, "--no-textfile", "all"]) == exit_code
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("POSTGRESQL ") and any(line.startswith("BACKUP ") for line in out)


def test_a_run_keeps_its_counters_and_writes_the_textfile(monkeypatch, tmp_path, capsys):
    fake_checks(monkeypatch, {"postgresql": [OK], "backup": [OK]})
    (tmp_path / "textfile").mkdir()
    path = write_config(tmp_path, config(tmp_path))
    for _run in range(2):
        assert ckc.main(["--config", path, "postgresql"]) == 0
    state = json.loads((tmp_path / "state" / "postgresql.json").read_text())
    assert state["counters"] == {"runs": 2} and "time" in state
    prom = (tmp_path / "textfile" / "claude_kit_check_postgresql.prom")
    assert 'claude_kit_check_state{service="postgresql",check="c0"} 0' in prom.read_text()
    assert (prom.stat().st_mode & 0o777) == 0o644
    assert not (tmp_path / "textfile" / "claude_kit_check_backup.prom").exists()
    capsys.readouterr()


def test_textfile_dir_override_skip_and_absence(monkeypatch, tmp_path, capsys):
    fake_checks(monkeypatch, {"postgresql": [OK], "backup": [OK]})
    path = write_config(tmp_path, config(tmp_path))
    other = tmp_path / "other"
    other.mkdir()
    assert ckc.main(["--config", path, "--textfile-dir", str(other), "--no-textfile", "backup"]) == 0
    assert not list(other.iterdir())
    assert ckc.main(["--config", path, "--textfile-dir", str(other), "backup"]) == 0
    assert [p.name for p in other.iterdir()] == ["claude_kit_check_backup.prom"]
    assert ckc.main(["--config", path, "--textfile-dir", str(tmp_path / "nowhere"), "backup"]) == 0
    assert not (tmp_path / "nowhere").exists()
    capsys.readouterr()


def test_json_output_from_main(monkeypatch, tmp_path, capsys):
    fake_checks(monkeypatch, {"postgresql": [OK, CRITICAL], "backup": [OK]})
    path = write_config(tmp_path, config(tmp_path))
    assert ckc.main(["--config", path, "--json", "--no-textfile", "postgresql"]) == 2
    doc = json.loads(capsys.readouterr().out)
    assert doc["state"] == "CRITICAL" and doc["services"][0]["checks"][1]["state"] == "CRITICAL"


def test_config_and_usage_errors_exit_unknown(tmp_path, capsys):
    cfg = config(tmp_path)
    del cfg["postgresql"]["thresholds"]["cache_hit_min_blocks"]
    path = write_config(tmp_path, cfg)
    assert ckc.main(["--config", path, "postgresql"]) == 3
    assert capsys.readouterr().out == (f"CLAUDE-KIT-CHECK UNKNOWN - {path}: missing key "
                                       "postgresql.thresholds.cache_hit_min_blocks\n")
    assert ckc.main(["--config", path, "--json", "postgresql"]) == 3
    assert "cache_hit_min_blocks" in json.loads(capsys.readouterr().out)["error"]
    assert ckc.main(["--config", str(tmp_path / "absent.json"), "backup"]) == 3
    assert "cannot read the configuration" in capsys.readouterr().out
    assert ckc.main(["--config", path, "--threshold", "backup.age_hours=3", "backup"]) == 3
    assert "unknown threshold backup.age_hours" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        ckc.main(["--config", path, "mysql"])
    assert exc.value.code == 3
    capsys.readouterr()


def test_an_override_may_supply_a_threshold_the_config_lacks(monkeypatch, tmp_path, capsys):
    fake_checks(monkeypatch, {"postgresql": [OK], "backup": [OK]})
    cfg = config(tmp_path)
    del cfg["backup"]["thresholds"]["drill_warning_days"]
    path = write_config(tmp_path, cfg)
    assert ckc.main(["--config", path, "--no-textfile", "--threshold", "backup.drill_warning_days=3", "backup"]) == 0
    capsys.readouterr()


def test_a_broken_check_is_unknown_and_does_not_stop_the_others(monkeypatch, tmp_path):
    def broken(*_args):
        raise KeyError("used_memory")

    monkeypatch.setattr(ckc, "CHECKS", dict(ckc.CHECKS, redis=broken))
    items = ckc.run_service(config(tmp_path), "redis", NOW)
    assert [(i.name, i.code) for i in items] == [("check", UNKNOWN)] and "KeyError" in items[0].summary


def test_counters_that_cannot_be_kept_are_reported(monkeypatch, tmp_path):
    fake_checks(monkeypatch, {"nginx": [OK]})
    (tmp_path / "a-file").write_text("")
    items = ckc.run_service(config(tmp_path, state_dir=str(tmp_path / "a-file" / "state")), "nginx", NOW)
    assert items[-1].name == "state" and items[-1].code == UNKNOWN and "cannot keep counters" in items[-1].summary


def test_a_corrupt_state_file_is_a_first_run(tmp_path, capsys):
    (tmp_path / "redis.json").write_text("{half")
    assert ckc.load_state(str(tmp_path), "redis") == {}
    assert ckc.load_state(str(tmp_path), "nginx") == {}
    assert "ignoring" in capsys.readouterr().err


def test_http_get_reports_a_refused_port_as_unreachable():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        with pytest.raises(ckc.Unreachable, match="refused"):
            ckc.http_get(f"http://127.0.0.1:{port}/health", 2)


def test_http_get_verifies_an_https_server_against_the_ca_file(tmp_path):
    import http.server
    import shutil
    import ssl
    import subprocess
    import threading

    assert shutil.which("openssl"), "openssl missing"
    ca, ca_key, cert, key, csr = (tmp_path / n for n in ("ca.crt", "ca.key", "s.crt", "s.key", "s.csr"))
    (tmp_path / "ext").write_text("subjectAltName=IP:127.0.0.1\n")

    def openssl(*args):
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
            "-subj", "/CN=check test CA", "-keyout", ca_key, "-out", ca)
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=daemon",
            "-keyout", key, "-out", csr)
    openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-CAserial",
            tmp_path / "ca.srl", "-days", "2", "-extfile", tmp_path / "ext", "-out", cert)

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"https://127.0.0.1:{server.server_address[1]}/health"
        assert ckc.http_get(url, 5, str(ca)) == (200, "{}")
        # Not trusted by the system's store: unreachable, never answered unverified.
        with pytest.raises(ckc.Unreachable, match="certificate verify failed"):
            ckc.http_get(url, 5)
        with pytest.raises(ckc.Unreachable):
            ckc.http_get(url, 5, str(tmp_path / "missing-ca.crt"))
    finally:
        server.shutdown()
        server.server_close()
