"""playbooks/upgrade.yml, last in this scenario because it leaves both hosts on Debian 13: the
two hosts get Debian's release upgrade (12 -> 13) as an operator does it (apt sources, full-upgrade,
which keeps PostgreSQL 15 running and adds no 17 cluster), then the upgrade playbook takes a dump,
moves the data from PostgreSQL 15 to 17 with pg_upgradecluster and compares every table before and
after. Checked here independently: every row is there with the same contents, the old cluster is
kept stopped as the way back, the kit's settings and least privilege hold on 17, pgBackRest's stanza
follows (a backup of 17 verifies, WAL reaches the repository), and a second run changes nothing."""

import concurrent.futures
import json

import pytest
from helpers import STATE_DIR, as_postgres, get, insert_alerts, psql, run_playbook, scalar, start_unit, unique

testinfra_hosts = ["backup-db"]
TABLES = ["alerts", "usage_data", "predictions", "users"]
# Each table's rows in key order as one md5, read the same way on 15 and 17.
CONTENTS = ("SET DateStyle = 'ISO, YMD'; SET TimeZone = 'UTC'; SET extra_float_digits = 1; "
            "SELECT md5(coalesce(string_agg(r::text, '|' ORDER BY r::text), '')) || ' ' || count(*) FROM {} AS r")
RELEASE_UPGRADE = (
    "sed -i 's/bookworm/trixie/g' /etc/apt/sources.list && apt-get update -qq && "
    "DEBIAN_FRONTEND=noninteractive apt-get -y -qq -o Dpkg::Options::=--force-confold full-upgrade"
)


def said(out, text):
    """Whether the run's output says text (the yaml callback folds long messages over lines)."""
    return text in " ".join(out.split())


def contents(db):
    return {t: psql(db, CONTENTS.format(t))[-1] for t in TABLES}


@pytest.fixture(scope="module")
def upgraded():
    db, repo = get("backup-db"), get("backup-repo")
    prefix = insert_alerts(db, unique("upgrade"), 300)
    before = contents(db)
    dumps_before = {r["name"] for r in json.loads(repo.check_output(
        "runuser -u postgres -- /usr/local/bin/claude-kit-backup list --json"))}
    # On Debian 12 there is nothing to upgrade: the playbook says so and changes nothing.
    rc, out, recap = run_playbook("upgrade.yml", "--check")
    assert rc == 0 and said(out, "PostgreSQL 15 already: nothing to upgrade"), out[-3000:]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda h: h.run("sh -c %s", RELEASE_UPGRADE), (db, repo)))
    for result in results:
        assert result.rc == 0, result.stderr[-2000:]
    # The release upgrade keeps 15 serving, and Debian makes no 17 cluster beside it.
    assert [line.split()[:4] for line in db.check_output("pg_lsclusters --no-header").splitlines()] == [
        ["15", "main", "5432", "online"]]
    rc, out, recap = run_playbook("upgrade.yml")
    return dict(db=db, repo=repo, prefix=prefix, before=before, rc=rc, out=out, recap=recap,
                dumps_before=dumps_before)


def test_every_row_is_there_with_the_same_contents_on_17(upgraded):
    assert upgraded["rc"] == 0, upgraded["out"][-5000:]
    db = upgraded["db"]
    assert db.file("/etc/debian_version").content_string.startswith("13")
    assert int(scalar(db, "SHOW server_version_num")) >= 170000
    assert contents(db) == upgraded["before"]
    assert scalar(db, f"SELECT count(*) FROM alerts WHERE id LIKE '{upgraded['prefix']}-%'") == "300"
    # The playbook's own comparison ran and said so.
    assert said(upgraded["out"], "PostgreSQL 15 -> 17, every table: the same rows, the same digest")


def test_a_dump_was_taken_first(upgraded):
    repo = upgraded["repo"]
    dumps = json.loads(repo.check_output("runuser -u postgres -- /usr/local/bin/claude-kit-backup list --json"))
    new = [r for r in dumps if r["method"] == "dump" and r["name"] not in upgraded["dumps_before"] and r["verified"]]
    assert new, dumps
    # The oldest new dump is the one before the upgrade: PostgreSQL 15, with the 300 new alerts.
    first = json.loads(repo.file(f"/var/backups/claude-kit/dumps/{sorted(r['name'] for r in new)[0].split('.')[0]}.json")
                       .content_string)
    assert first["server_version"].startswith("15")
    assert first["row_counts"]["public.alerts"] == int(upgraded["before"]["alerts"].split()[1])


def test_the_old_cluster_is_kept_stopped_as_the_way_back(upgraded):
    db = upgraded["db"]
    clusters = {tuple(line.split()[:2]): line.split() for line in db.check_output("pg_lsclusters --no-header").splitlines()}
    assert clusters[("15", "main")][3] == "down" and clusters[("17", "main")][2:4] == ["5432", "online"]
    assert db.file("/etc/postgresql/15/main/start.conf").content_string.strip().splitlines()[-1] == "manual"
    assert db.file("/var/lib/postgresql/15/main/PG_VERSION").content_string.strip() == "15"
    assert db.service("postgresql@17-main").is_enabled


def test_the_kits_settings_and_least_privilege_hold_on_17(upgraded):
    db = upgraded["db"]
    assert "pg_stat_statements" in scalar(db, "SHOW shared_preload_libraries")
    assert scalar(db, "SELECT extversion = default_version FROM pg_extension JOIN pg_available_extensions "
                      "ON name = extname WHERE extname = 'pg_stat_statements'") == "t"
    assert scalar(db, "SELECT count(*) > 0 FROM pg_stat_statements") == "t"
    assert scalar(db, "SHOW password_encryption") == "scram-sha-256"
    assert scalar(db, "SHOW archive_mode") == "on"
    # The dumps' role reads everything and may change nothing.
    refused = as_postgres(db, "psql -XAtq -d claude_daemon -c %s",
                          "SET ROLE claude_backup; DELETE FROM alerts WHERE false")
    assert refused.rc != 0 and "permission denied" in refused.stderr


def test_pgbackrest_follows_the_new_version(upgraded):
    repo = upgraded["repo"]
    info = json.loads(repo.check_output("runuser -u postgres -- pgbackrest --stanza=claude --output=json info"))[0]
    assert sorted(info["db"], key=lambda d: d["id"])[-1]["version"] == "17"
    assert start_unit(repo, "claude-kit-backup-pgbackrest-full.service").rc == 0
    result = json.loads(repo.file(f"{STATE_DIR}/pgbackrest-last.json").content_string)
    assert result["ok"], result


def test_without_the_record_of_the_comparison_the_new_cluster_is_not_trusted(upgraded):
    # As after an upgrade that stopped half-way or whose comparison found a difference: the upgrade
    # playbook and the database tier's own run both refuse before any change.
    db = upgraded["db"]
    record = "/var/lib/postgresql/.claude-kit-upgraded-15-17-main.json"
    written = json.loads(db.file(record).content_string)
    assert (written["from"], written["to"]) == ("15", "17")
    alerts = next(t for t in written["tables"] if t["table_name"] == "alerts")
    assert alerts["record_count"] == int(upgraded["before"]["alerts"].split()[1]) and alerts["digest"]
    db.check_output(f"mv {record} {record}.aside")
    try:
        rc, out, recap = run_playbook("upgrade.yml")
        assert rc != 0 and said(out, "nothing records that their comparison passed"), out[-3000:]
        rc, out, recap = run_playbook("database.yml")
        assert rc != 0 and said(out, "nothing records that an upgrade between them finished"), out[-3000:]
        assert all(r["changed"] == 0 for r in recap.values()), recap
    finally:
        db.check_output(f"mv {record}.aside {record}")


def test_a_second_run_finds_nothing_to_do(upgraded):
    rc, out, recap = run_playbook("upgrade.yml")
    assert rc == 0, out[-3000:]
    assert said(out, "already upgraded to 17; the 15 cluster is kept, stopped, as the way back")
    assert all(r["changed"] == 0 for r in recap.values()), recap
