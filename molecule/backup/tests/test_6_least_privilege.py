"""The dumps' role reads what pg_read_all_data gives and nothing more; its
password is in a 0600 file only, never in a setting, unit or command line."""

import json

import pytest
from helpers import get, scalar

testinfra_hosts = ["backup-repo"]


@pytest.fixture(scope="module")
def db():
    return get("backup-db")


def db_address(host):
    return json.loads(host.file("/etc/claude-kit/backup.json").content_string)["dump"]["host"]


def as_backup_role(host, sql, dbname="claude_daemon"):
    """psql over TCP from the backup host as claude_backup, with the program's passfile."""
    return host.run(
        "runuser -u postgres -- env PGPASSFILE=/etc/claude-kit/backup.pgpass psql -XAtq -v ON_ERROR_STOP=1 "
        "-h %s -U claude_backup -d %s -c %s", db_address(host), dbname, sql)


def test_it_reads_every_table(host):
    result = as_backup_role(host, "SELECT count(*) FROM alerts")
    assert result.rc == 0 and int(result.stdout) > 0
    assert as_backup_role(host, "SELECT max(version) FROM claude_kit.schema_migrations").rc == 0


@pytest.mark.parametrize("sql", [
    "INSERT INTO alerts (id, level, title, timestamp) VALUES ('x', 'info', 't', now())",
    "UPDATE users SET email = NULL",
    "DELETE FROM usage_data",
    "TRUNCATE alerts",
    "CREATE TABLE public.sneaky (id int)",
    "CREATE TEMP TABLE sneaky (id int)",
    "SELECT pg_read_file('/etc/passwd')",
    "COPY alerts TO '/tmp/alerts.csv'",
    "ALTER SYSTEM SET work_mem = '1GB'",
    "CREATE ROLE sneaky",
])
def test_a_write_or_anything_else_is_refused(host, sql):
    result = as_backup_role(host, sql)
    assert result.rc != 0
    assert "permission denied" in result.stderr or "must be" in result.stderr


def test_it_is_not_a_superuser_and_has_no_other_membership(db):
    assert scalar(db, "SELECT rolsuper OR rolcreatedb OR rolcreaterole OR rolreplication OR rolbypassrls "
                      "FROM pg_roles WHERE rolname = 'claude_backup'") == "f"
    assert scalar(db, "SELECT string_agg(b.rolname, ',') FROM pg_auth_members m JOIN pg_roles a ON a.oid = m.member "
                      "JOIN pg_roles b ON b.oid = m.roleid WHERE a.rolname = 'claude_backup'") == "pg_read_all_data"


def test_it_cannot_reach_another_database(host):
    result = as_backup_role(host, "SELECT 1", dbname="postgres")
    assert result.rc != 0 and "no pg_hba.conf entry" in result.stderr


def test_its_password_is_only_in_the_passfile(host):
    password = host.file("/etc/claude-kit/backup.pgpass").content_string.strip().rsplit(":", 1)[1]
    assert len(password) >= 16
    passfile = host.file("/etc/claude-kit/backup.pgpass")
    assert passfile.mode == 0o600 and passfile.user == "postgres"
    found = host.run("grep -rlF %s /etc/claude-kit/backup.json /etc/systemd/system /etc/pgbackrest.conf "
                     "/var/lib/claude-kit/backup /var/log/pgbackrest", password)
    assert found.stdout == ""
