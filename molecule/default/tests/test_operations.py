"""What an operator relies on: check mode, drift repair, restarts, migrations, row counts.

These tests re-run the converge playbook with ansible-playbook, so they run
once for all hosts (module-scoped fixtures) and assert per host. The runs about
settings take the role's tuning part only (`--tags postgresql_tuning`, as an
operator changing one setting would): a whole converge costs about four times
as much, and the whole playbook's check mode and no-change run are proven
already (test_check_mode_on_a_converged_host_reports_nothing, molecule's
idempotence step).
"""

import shutil
import tempfile
import pathlib

import pytest
import testinfra.utils.ansible_runner
from helpers import PROJECT_DIR, INVENTORY, psql, run_module, run_playbook

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(INVENTORY).get_hosts("database")
ALL_HOSTS = testinfra_hosts


# The role's tuning part: the ALTER SYSTEM settings, their reload and restart handlers.
TUNING = ("--tags", "postgresql_tuning")


def start_time(host):
    return psql(host, "SELECT pg_postmaster_start_time()", "postgres")[0]


def restarts_in(output, hostname):
    """How often the restart handler reported a change for this host."""
    count, in_handler = 0, False
    for line in output.splitlines():
        if line.startswith("RUNNING HANDLER") or line.startswith("TASK"):
            in_handler = "Restart PostgreSQL" in line
        elif in_handler and line.startswith(f"changed: [{hostname}]"):
            count += 1
    return count


@pytest.fixture(scope="module")
def hosts_by_name():
    return {name: testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}") for name in ALL_HOSTS}


@pytest.fixture(scope="module")
def clean_check_run():
    return run_playbook("--check", "--diff")


def test_check_mode_on_a_converged_host_reports_nothing(host, clean_check_run):
    rc, output, recap = clean_check_run
    assert rc == 0, output[-3000:]
    assert recap[host.backend.get_hostname()]["changed"] == 0


@pytest.fixture(scope="module")
def work_mem_drift(hosts_by_name):
    """Someone ran ALTER SYSTEM SET work_mem by hand: check mode reports it, a run repairs it by reload."""
    before = {}
    for name, h in hosts_by_name.items():
        psql(h, "ALTER SYSTEM SET work_mem = '8MB'", "postgres")
        psql(h, "SELECT pg_reload_conf()", "postgres")
        before[name] = start_time(h)
    check = run_playbook("--check", *TUNING)
    after_check = {name: psql(h, "SHOW work_mem", "postgres")[0] for name, h in hosts_by_name.items()}
    real = run_playbook(*TUNING)
    # Read now: later fixtures restart the servers, and tests run host by host.
    after = {name: (psql(h, "SHOW work_mem", "postgres")[0], start_time(h)) for name, h in hosts_by_name.items()}
    return before, check, after_check, real, after


def test_check_mode_reports_drift_and_changes_nothing(host, work_mem_drift):
    _before, (rc, output, recap), after_check, _real, _after = work_mem_drift
    name = host.backend.get_hostname()
    assert rc == 0, output[-3000:]
    assert recap[name]["changed"] >= 1
    assert after_check[name] == "8MB"


def test_drift_is_repaired_with_a_reload_not_a_restart(host, work_mem_drift):
    before, _check, _after_check, (rc, output, _recap), after = work_mem_drift
    name = host.backend.get_hostname()
    assert rc == 0, output[-3000:]
    work_mem, started = after[name]
    assert work_mem == "4MB"
    assert restarts_in(output, name) == 0
    assert started == before[name]


@pytest.fixture(scope="module")
def shared_buffers_drift(hosts_by_name, work_mem_drift):
    """shared_buffers changed and applied by a restart outside Ansible: a run restores it with one restart."""
    before = {}
    for name, h in hosts_by_name.items():
        major = int(psql(h, "SHOW server_version_num", "postgres")[0]) // 10000
        psql(h, "ALTER SYSTEM SET shared_buffers = '128MB'", "postgres")
        h.check_output(f"systemctl restart postgresql@{major}-main")
        assert psql(h, "SHOW shared_buffers", "postgres") == ["128MB"]
        before[name] = start_time(h)
    run = run_playbook(*TUNING)
    after = {
        name: (
            start_time(h),
            psql(h, "SHOW shared_buffers", "postgres")[0],
            psql(h, "SELECT count(*) FROM pg_settings WHERE pending_restart", "postgres")[0],
        )
        for name, h in hosts_by_name.items()
    }
    return before, run, after


def test_restart_only_setting_costs_exactly_one_restart(host, shared_buffers_drift):
    before, (rc, output, _recap), after = shared_buffers_drift
    name = host.backend.get_hostname()
    assert rc == 0, output[-3000:]
    assert restarts_in(output, name) == 1
    started, shared_buffers, pending = after[name]
    assert started != before[name]
    assert shared_buffers == "256MB"
    assert pending == "0"


# --- schema migrations, through the role, in a database of their own ---------------

PROBE_DB = "claude_probe"
MIGRATION_ARGS = (
    "-e", f"postgresql_db_name={PROBE_DB}",
    "-e", "postgresql_schema_remote_dir=/var/lib/claude-kit/schema-probe",
    "--tags", "postgresql_database,postgresql_schema",
)


@pytest.fixture(scope="module")
def migrations(hosts_by_name, shared_buffers_drift):
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="kit-migrations-"))
    shutil.copy(PROJECT_DIR / "files" / "schema.sql", workdir / "schema.sql")
    (workdir / "0002_probe_items.sql").write_text(
        "CREATE TABLE probe_items (id serial PRIMARY KEY, label text NOT NULL);\n"
        "INSERT INTO probe_items (label) VALUES ('seeded once');\n"
    )
    args = (*MIGRATION_ARGS, "-e", f"postgresql_schema_dir={workdir}")
    steps = {"first": run_playbook(*args), "second": run_playbook(*args)}
    steps["second_rows"] = {n: psql(h, "SELECT label FROM probe_items", PROBE_DB) for n, h in hosts_by_name.items()}

    # A migration that fails half-way must leave nothing behind.
    (workdir / "0003_broken.sql").write_text("CREATE TABLE probe_half (id int);\nSELECT 1 / 0;\n")
    steps["broken"] = run_playbook(*args)
    steps["broken_tables"] = {
        n: psql(h, "SELECT to_regclass('public.probe_half') IS NULL", PROBE_DB) for n, h in hosts_by_name.items()
    }
    (workdir / "0003_broken.sql").unlink()

    # Editing an applied migration is refused.
    (workdir / "0002_probe_items.sql").write_text("CREATE TABLE probe_items (id bigint);\n")
    steps["edited"] = run_playbook(*args)
    yield steps
    shutil.rmtree(workdir)
    for h in hosts_by_name.values():
        psql(h, f"DROP DATABASE IF EXISTS {PROBE_DB}", "postgres")


def test_new_migration_is_applied_once_as_the_owner(host, migrations):
    name = host.backend.get_hostname()
    rc, output, recap = migrations["first"]
    assert rc == 0, output[-3000:]
    assert psql(host, "SELECT version FROM claude_kit.schema_migrations ORDER BY 1", PROBE_DB) == ["1", "2"]
    assert psql(host, "SELECT tableowner FROM pg_tables WHERE tablename = 'probe_items'", PROBE_DB) == ["claude_owner"]
    rc, output, recap = migrations["second"]
    assert rc == 0, output[-3000:]
    assert recap[name]["changed"] == 0
    assert migrations["second_rows"][name] == ["seeded once"]


def test_failing_migration_is_rolled_back_and_named(host, migrations):
    name = host.backend.get_hostname()
    rc, output, _recap = migrations["broken"]
    assert rc != 0
    assert "0003_broken.sql (version 3) failed and was rolled back" in output
    assert "division by zero" in output
    assert migrations["broken_tables"][name] == ["t"]
    assert psql(host, "SELECT max(version) FROM claude_kit.schema_migrations", PROBE_DB) == ["2"]


def test_edited_applied_migration_is_refused(host, migrations):
    rc, output, _recap = migrations["edited"]
    assert rc != 0
    assert "0002_probe_items.sql was changed after it was applied" in output


# --- pg_row_counts and the verify runbook ------------------------------------------------


@pytest.fixture(scope="module")
def row_count_probe(hosts_by_name, migrations):
    for h in hosts_by_name.values():
        psql(
            h,
            "SET ROLE claude_owner;"
            " CREATE TABLE rc_probe (id int PRIMARY KEY, created_at timestamp);"
            " CREATE TABLE rc_plain (id int);"
            " INSERT INTO rc_probe SELECT g, timestamp '2026-01-01 00:00:00' + g * interval '1 day'"
            "   FROM generate_series(1, 5) g;"
            " INSERT INTO rc_plain SELECT generate_series(1, 3);"
            " ANALYZE rc_probe; ANALYZE rc_plain;",
        )
    yield
    for h in hosts_by_name.values():
        psql(h, "DROP TABLE rc_probe; DROP TABLE rc_plain")


def test_pg_row_counts_exact(host, row_count_probe):
    name = host.backend.get_hostname()
    res = run_module(name, "claude_kit.stack.pg_row_counts", {"db": "claude_daemon", "tables": ["rc_probe", "rc_plain"]})[name]
    assert res["changed"] is False
    assert res["tables"] == [
        {
            "table_name": "rc_probe",
            "record_count": 5,
            "estimated": False,
            "oldest_record": "2026-01-02T00:00:00",
            "newest_record": "2026-01-06T00:00:00",
        },
        {"table_name": "rc_plain", "record_count": 3, "estimated": False, "oldest_record": None, "newest_record": None},
    ]
    assert res["total_records"] == 8


def test_pg_row_counts_estimate_and_all_tables(host, row_count_probe):
    name = host.backend.get_hostname()
    res = run_module(name, "claude_kit.stack.pg_row_counts", {"db": "claude_daemon", "mode": "estimate"})[name]
    counts = {t["table_name"]: t["record_count"] for t in res["tables"]}
    assert counts["rc_probe"] == 5 and counts["rc_plain"] == 3
    assert {"alerts", "usage_data", "predictions", "users"} <= set(counts)
    assert all(t["estimated"] for t in res["tables"])


def test_pg_row_counts_unknown_table_fails_by_name(host, row_count_probe):
    name = host.backend.get_hostname()
    res = run_module(name, "claude_kit.stack.pg_row_counts", {"db": "claude_daemon", "tables": ["no_such_table"]})[name]
    assert res.get("failed") is True
    assert "public.no_such_table does not exist" in res["msg"]


def test_verify_runbook_prints_the_guides_table(host, row_count_probe):
    rc, output, _recap = run_playbook(
        "-e", '{"verify_tables": ["rc_probe"]}', playbook=str(PROJECT_DIR / "playbooks" / "verify.yml")
    )
    assert rc == 0, output[-3000:]
    assert "table_name | record_count | oldest_record       | newest_record" in output
    assert "rc_probe   |            5 | 2026-01-02T00:00:00 | 2026-01-06T00:00:00" in output


# --- settings the kit no longer declares are taken back; hand-made ones are not -----------


@pytest.fixture(scope="module")
def settings_reset(hosts_by_name, row_count_probe):
    declared = run_playbook("-e", '{"postgresql_settings": {"log_min_duration_statement": "250ms"}}', *TUNING)
    with_setting = {n: psql(h, "SHOW log_min_duration_statement", "postgres")[0] for n, h in hosts_by_name.items()}
    for h in hosts_by_name.values():
        psql(h, "ALTER SYSTEM SET log_temp_files = '1MB'", "postgres")  # by hand, outside the kit
    check = run_playbook("--check", *TUNING)
    after_check = {n: psql(h, "SHOW log_min_duration_statement", "postgres")[0] for n, h in hosts_by_name.items()}
    removed = run_playbook(*TUNING)
    after = {
        n: (psql(h, "SHOW log_min_duration_statement", "postgres")[0],
            psql(h, "SELECT setting FROM pg_file_settings WHERE name = 'log_temp_files'", "postgres"))
        for n, h in hosts_by_name.items()
    }
    again = run_playbook(*TUNING)
    yield declared, with_setting, check, after_check, removed, after, again
    for h in hosts_by_name.values():
        psql(h, "ALTER SYSTEM RESET log_temp_files", "postgres")
        psql(h, "SELECT pg_reload_conf()", "postgres")


def test_a_declared_setting_is_applied(host, settings_reset):
    (rc, output, _recap), with_setting = settings_reset[0], settings_reset[1]
    assert rc == 0, output[-3000:]
    assert with_setting[host.backend.get_hostname()] == "250ms"


def test_a_setting_no_longer_declared_is_reset_and_reported_as_a_change(host, settings_reset):
    name = host.backend.get_hostname()
    _declared, _with, (crc, coutput, crecap), after_check, (rc, output, recap), after, _again = settings_reset
    assert crc == 0, coutput[-3000:]
    assert crecap[name]["changed"] >= 1 and after_check[name] == "250ms"  # check mode tells, changes nothing
    assert rc == 0, output[-3000:]
    assert recap[name]["changed"] >= 1
    assert "Reset (no longer declared): log_min_duration_statement" in output
    assert after[name][0] == "1s"  # the role's own value again (conf.d, postgresql_log_min_duration_statement)


def test_a_hand_made_setting_is_reported_not_removed(host, settings_reset):
    name = host.backend.get_hostname()
    (rc, output, _recap), after = settings_reset[4], settings_reset[5]
    assert rc == 0, output[-3000:]
    assert after[name][1] == ["1MB"]
    assert "the kit does not declare" in output and "log_temp_files" in output


def test_after_the_reset_a_run_changes_nothing(host, settings_reset):
    rc, output, recap = settings_reset[6]
    assert rc == 0, output[-3000:]
    assert recap[host.backend.get_hostname()]["changed"] == 0
