"""The pure logic of the backup program (roles/backup/files/claude-kit-backup):
retention, recovery-target parsing, the point-in-time plan, count comparison,
metrics and the list table. The program's runs against real servers are in
molecule/backup."""

import datetime
import importlib.machinery
import importlib.util
import os

import pytest

PROGRAM = os.path.join(os.path.dirname(__file__), "..", "..", "roles", "backup", "files", "claude-kit-backup")
UTC = datetime.timezone.utc


def load():
    loader = importlib.machinery.SourceFileLoader("claude_kit_backup", PROGRAM)
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader("claude_kit_backup", loader))
    loader.exec_module(module)
    return module


ckb = load()
NOW = datetime.datetime(2026, 12, 2, 12, 0, 0, tzinfo=UTC)


def dump(days_old, name=None):
    start = NOW - datetime.timedelta(days=days_old)
    return {"name": name or f"d{days_old}", "start": start.strftime("%Y-%m-%dT%H:%M:%SZ")}


def doomed(ages, days, count):
    manifests = [dump(a) for a in sorted(ages)]
    return sorted(m["name"] for m in ckb.plan_retention(manifests, NOW, days, count))


def test_retention_keeps_the_young_or_the_newest_whichever_keeps_more():
    assert doomed([1, 2, 9, 10, 12, 20, 30], days=7, count=3) == ["d10", "d12", "d20", "d30"]
    assert doomed([1, 2, 3, 4, 5], days=7, count=1) == []


def test_retention_never_deletes_the_newest_good_dump():
    assert doomed([30, 40], days=7, count=1) == ["d40"]
    assert doomed([50], days=1, count=1) == []


def test_retention_by_count_alone_when_everything_is_old():
    assert doomed([10, 11, 12, 13], days=7, count=2) == ["d12", "d13"]


@pytest.mark.parametrize("text, expected", [
    ("2026-12-02 02:30:00+00", "2026-12-02T02:30:00+00:00"),
    ("2026-12-02T02:30:00Z", "2026-12-02T02:30:00+00:00"),
    ("2026-12-02 02:30:00 UTC", "2026-12-02T02:30:00+00:00"),
    ("2026-12-02 03:30:00+0100", "2026-12-02T03:30:00+01:00"),
    ("2026-12-02 02:30:00.250-05", "2026-12-02T02:30:00.250000-05:00"),
])
def test_target_times_with_a_zone_are_understood(text, expected):
    assert ckb.parse_target_time(text).isoformat() == expected


@pytest.mark.parametrize("text, message", [
    ("2026-12-02 02:30:00", "has no time zone"),
    ("yesterday", "is not a time"),
    ("", "is not a time"),
])
def test_target_times_without_a_zone_or_malformed_are_refused(text, message):
    with pytest.raises(ckb.BackupError, match=message):
        ckb.parse_target_time(text)


def backup(label, stop):
    return {"label": label, "type": "full", "timestamp": {"start": stop.timestamp() - 60, "stop": stop.timestamp()}}


def test_pitr_starts_from_the_newest_backup_that_ended_before_the_target():
    backups = [backup("A", NOW - datetime.timedelta(days=3)), backup("B", NOW - datetime.timedelta(days=1))]
    assert ckb.plan_pitr(backups, NOW - datetime.timedelta(hours=2), NOW)["label"] == "B"
    assert ckb.plan_pitr(backups, NOW - datetime.timedelta(days=2), NOW)["label"] == "A"


def test_pitr_refuses_a_target_before_every_backup_or_in_the_future():
    backups = [backup("A", NOW - datetime.timedelta(days=3))]
    with pytest.raises(ckb.BackupError, match="no pgBackRest backup ended before"):
        ckb.plan_pitr(backups, NOW - datetime.timedelta(days=4), NOW)
    with pytest.raises(ckb.BackupError, match="in the future"):
        ckb.plan_pitr(backups, NOW + datetime.timedelta(minutes=1), NOW)
    with pytest.raises(ckb.BackupError, match="the oldest ended none"):
        ckb.plan_pitr([], NOW - datetime.timedelta(days=1), NOW)


def test_count_differences_name_the_table_and_both_numbers():
    assert ckb.compare_counts({"public.a": 3}, {"public.a": 3}) == []
    assert ckb.compare_counts({"public.a": 3, "public.b": 1}, {"public.a": 2, "public.c": 5}) == [
        "public.a: manifest 3, restored 2",
        "public.b: manifest 1, restored no table",
        "public.c: manifest no table, restored 5",
    ]


def test_metrics_are_prometheus_text_with_the_method_label():
    text = ckb.metrics_text("dump", {"method": "dump", "ok": True, "end_epoch": 100, "duration_seconds": 1.5,
                                     "last_success_epoch": 100, "size_bytes": 42})
    assert 'claude_kit_backup_last_run_ok{method="dump"} 1' in text
    assert 'claude_kit_backup_last_size_bytes{method="dump"} 42' in text
    assert "# TYPE claude_kit_backup_last_duration_seconds gauge" in text
    failed = ckb.metrics_text("drill-dump", {"method": "dump", "ok": False, "end_epoch": 5, "last_success_epoch": None})
    assert 'claude_kit_drill_last_run_ok{method="dump"} 0' in failed
    assert "last_success_timestamp" not in failed


def test_the_list_table_lines_up_and_says_what_is_unverified():
    rows = [
        {"method": "dump", "name": "x.dump", "time": "2026-12-02T02:00:00Z", "size_bytes": 2048,
         "duration_seconds": 1.25, "verified": True, "rows": 10},
        {"method": "dump", "name": "y", "time": "", "size_bytes": None, "duration_seconds": None,
         "verified": False, "rows": None, "note": "failed verification (in failed/)"},
    ]
    lines = ckb.render_rows(rows).splitlines()
    assert lines[0].split() == ["METHOD", "NAME", "TIME", "(UTC)", "SIZE", "SECONDS", "VERIFIED", "ROWS"]
    assert "2.0 KiB" in lines[1] and "yes" in lines[1] and lines[1].rstrip().endswith("10")
    assert "NO (failed verification (in failed/))" in lines[2]
    assert lines[0].index("SIZE") == lines[1].index("2.0 KiB")


def test_dump_names_sort_by_time():
    cfg = {"dbname": "claude_daemon", "format": "custom"}
    early = ckb.dump_names(cfg, NOW)
    late = ckb.dump_names(cfg, NOW + datetime.timedelta(seconds=1))
    assert early["dump"] == "claude_daemon_20261202T120000Z.dump" and early["dump"] < late["dump"]
    assert ckb.dump_names(dict(cfg, format="plain-gz"), NOW)["dump"].endswith(".sql.gz")


def test_a_partial_write_never_replaces_the_target(tmp_path):
    target = tmp_path / "manifest.json"
    target.write_text("old")

    class Boom(str):
        def encode(self, *args):
            raise OSError("disk full")

    with pytest.raises(OSError):
        ckb.write_atomic(str(target), Boom("new"))
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_dumps_verify_the_server_over_tls(monkeypatch):
    cfg = {"passfile": "/etc/claude-kit/backup.pgpass", "sslmode": "verify-full", "sslrootcert": "/ca.crt"}
    # A PGSSLMODE of the caller's environment never weakens the dump's connection.
    monkeypatch.setenv("PGSSLMODE", "disable")
    env = ckb.dump_env(cfg)
    assert (env["PGSSLMODE"], env["PGSSLROOTCERT"]) == ("verify-full", "/ca.crt")
    # A config written before sslmode existed still verifies.
    assert ckb.tls_settings({"passfile": "p"}) == {"sslmode": "verify-full"}
