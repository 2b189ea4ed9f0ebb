"""Check mode tells the truth: on the converged (and by now restored) hosts the
tiers report nothing to change, and restore.yml --check names the backup it
would restore and changes nothing. Bad input stops the run, naming the
variable, before any host changes."""

import os

import pytest

from helpers import get, run_playbook, scalar

testinfra_hosts = ["backup-repo"]
CONVERGE = os.path.join(os.environ["MOLECULE_SCENARIO_DIRECTORY"], "converge.yml")


def test_the_converge_in_check_mode_reports_no_change():
    rc, out, recap = run_playbook(CONVERGE, "--check")
    assert rc == 0, out[-3000:]
    assert recap["backup-db"]["changed"] == 0 and recap["backup-repo"]["changed"] == 0, out[-3000:]


def test_restore_in_check_mode_names_the_backup_and_changes_nothing():
    db = get("backup-db")
    started = scalar(db, "SELECT pg_postmaster_start_time()", "postgres")
    for args in ((), ("-e", "restore_method=pgbackrest")):
        rc, out, recap = run_playbook("restore.yml", "--check", *args)
        assert rc == 0, out[-3000:]
        assert "Dump: claude_daemon_" in out or "Latest state: backup " in out
        assert recap["backup-db"]["changed"] == 0
    assert scalar(db, "SELECT pg_postmaster_start_time()", "postgres") == started


@pytest.mark.parametrize("extra, needles", [
    ("backup_dump_on_calendar='every tuesday-ish'", ["backup_dump_on_calendar", "not a systemd OnCalendar expression"]),
    ("backup_dump_format=zip", ["backup_dump_format", "zip"]),
])
def test_bad_input_stops_the_run_before_any_change(extra, needles):
    rc, out, recap = run_playbook(CONVERGE, "-e", extra)
    assert rc != 0
    for needle in needles:
        assert needle in out, out[-3000:]
    assert all(host["changed"] == 0 for host in recap.values()), recap
