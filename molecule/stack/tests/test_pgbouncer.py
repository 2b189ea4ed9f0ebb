"""PgBouncer between the daemons and PostgreSQL (role pgbouncer, docs/pgbouncer.md).

The daemons reach PostgreSQL only through PgBouncer on the database host
(their sessions' backends come from 127.0.0.1, over TLS); a write through Nginx
lands; however many clients crowd in, the application's server connections
stay within the derived pool; a client without TLS and a wrong password are
refused; the auth_file holds SCRAM verifiers only, root:postgres 0640; and
PgBouncer pools by transaction. The network clients run on the app hosts (the
firewall admits PgBouncer's port from them only), with the daemon's own
password file; PgBouncer's admin console is read over its Unix socket as
postgres, the service's own user.
"""

import functools
import json
import re
import time
import uuid

import testinfra.utils.ansible_runner

from test_stack import APPS, DATA, INVENTORY, http

testinfra_hosts = ["stack-data"]
VARS = testinfra.utils.ansible_runner.AnsibleRunner(INVENTORY).get_variables("stack-data")
DB_NAME = VARS["kit_db_name"]
APP_USER = VARS["kit_app_user"]
PGB_PORT = int(VARS.get("kit_pgbouncer_port", 6432))
RESERVED = int(VARS.get("kit_db_reserved_connections", 10))
CA_FILE = VARS.get("kit_tls_ca_file", "/etc/claude-kit/tls/ca.crt")
CONFIG_DIR = VARS.get("daemon_config_dir", "/etc/claude-daemon")
PASSWORD_FILE = CONFIG_DIR + "/db_password"
AUTH_FILE = "/etc/pgbouncer/userlist.txt"
RUN_ID = uuid.uuid4().hex[:8]

# Runs on an app host. argv[1] is JSON {password_file, conn, clients, hold, rounds}:
# `clients` threads each open their own connection with these libpq settings and
# run `rounds` transactions that hold for `hold` seconds. Prints {ok, errors}.
# A password in argv[1] (the wrong-password case) wins over the file.
CLIENT = r"""
import json, sys, threading
import psycopg2
args = json.loads(sys.argv[1])
conn_args = dict(args["conn"])
if "password" not in conn_args:
    with open(args["password_file"]) as handle:
        conn_args["password"] = handle.read()
errors, ok = [], []

def client():
    try:
        conn = psycopg2.connect(connect_timeout=20, **conn_args)
    except psycopg2.Error as exc:
        errors.append(str(exc).strip())
        return
    try:
        for _ in range(args.get("rounds", 1)):
            with conn.cursor() as cur:
                cur.execute("SELECT pg_sleep(%s), current_setting('TimeZone')", (args.get("hold", 0),))
                ok.append(cur.fetchone()[1])
            conn.commit()
    except psycopg2.Error as exc:
        errors.append(str(exc).strip())
    finally:
        conn.close()

threads = [threading.Thread(target=client) for _ in range(args.get("clients", 1))]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps({"ok": len(ok), "timezones": sorted(set(ok)), "errors": errors}))
"""


@functools.cache
def db_address():
    """The database host's address, as the daemons dial it (its certificate's IP SAN)."""
    return DATA.interface("eth0").addresses[0]


def psql(query):
    return DATA.check_output("runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 -d %s -c %s", DB_NAME, query)


def admin(command):
    """PgBouncer's admin console, over its Unix socket as postgres: {name: value} rows of SHOW CONFIG etc."""
    return DATA.check_output(
        "runuser -u postgres -- psql -XAtq -h /run/postgresql -p %s -U pgbouncer -d pgbouncer -c %s", str(PGB_PORT), command)


def config():
    return {line.split("|")[0]: line.split("|")[1] for line in admin("SHOW CONFIG").splitlines() if "|" in line}


def clients(app=None, **args):
    conn = {"host": db_address(), "port": PGB_PORT, "dbname": DB_NAME, "user": APP_USER,
            "sslmode": "verify-full", "sslrootcert": CA_FILE, "application_name": f"pgbouncer-test-{RUN_ID}"}
    conn.update(args.pop("conn", {}))
    payload = {"password_file": PASSWORD_FILE, "conn": conn, **args}
    return json.loads((app or APPS[0]).check_output("python3 -c %s %s", CLIENT, json.dumps(payload)))


def budget():
    """What PostgreSQL leaves the application: max_connections - superuser_reserved - the kit's reserve."""
    max_conn, reserved = psql("SELECT current_setting('max_connections') || '|' || "
                              "current_setting('superuser_reserved_connections')").split("|")
    return int(max_conn) - int(reserved) - RESERVED


def test_pgbouncer_pools_by_transaction_with_tls_and_scram():
    settings = config()
    assert settings["pool_mode"] == "transaction"
    assert settings["auth_type"] == "scram-sha-256"
    assert settings["client_tls_sslmode"] == "require"
    assert settings["server_tls_sslmode"] == "verify-full"
    assert settings["listen_port"] == str(PGB_PORT)


def test_the_pool_is_within_what_postgresql_leaves_the_application():
    settings = config()
    pool = int(settings["default_pool_size"]) + int(settings["reserve_pool_size"])
    assert 1 <= pool <= budget()
    assert int(settings["max_db_connections"]) == pool
    # Every app host's daemon pool fits PgBouncer's client limit.
    pools = [int(app.check_output(f"sed -n 's/^DB_POOL_MAX=//p' {CONFIG_DIR}/daemon.env")) for app in APPS]
    assert int(settings["max_client_conn"]) >= sum(pools)


def test_the_auth_file_holds_scram_verifiers_only():
    auth = DATA.file(AUTH_FILE)
    assert (auth.user, auth.group, auth.mode) == ("root", "postgres", 0o640)
    lines = [line for line in auth.content_string.splitlines() if line.strip()]
    # The application role only, with its verifier exactly as pg_authid keeps it.
    assert [line.split(" ")[0] for line in lines] == [f'"{APP_USER}"']
    assert re.fullmatch(r'"[^"]+" "SCRAM-SHA-256\$\d+:[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+"', lines[0])
    stored = psql(f"SELECT rolpassword FROM pg_authid WHERE rolname = '{APP_USER}'")
    assert lines[0].split(" ", 1)[1] == f'"{stored}"'
    password = APPS[0].check_output(f"cat {PASSWORD_FILE}")
    assert password and password not in auth.content_string


def test_the_daemons_are_pointed_at_pgbouncer():
    for app in APPS:
        env = app.check_output(f"cat {CONFIG_DIR}/daemon.env")
        assert f"DB_HOST={db_address()}\n" in env + "\n", app
        assert f"DB_PORT={PGB_PORT}\n" in env + "\n", app


def test_the_daemons_sessions_come_only_through_pgbouncer():
    """The application role's backends with the daemon's name come from 127.0.0.1 (PgBouncer), over TLS;
    none from an app host's address."""
    query = ("SELECT host(a.client_addr) || '|' || s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) "
             f"WHERE a.usename = '{APP_USER}' AND a.application_name = 'claude-daemon'")
    deadline = time.time() + 60
    sessions = [row for row in psql(query).splitlines() if row]
    while not sessions and time.time() < deadline:
        # The usage monitor writes every few seconds: a server connection is opened soon.
        time.sleep(2)
        sessions = [row for row in psql(query).splitlines() if row]
    assert sessions, "no session of the daemons"
    assert {row for row in sessions} == {"127.0.0.1|true"}, sessions
    apps = {app.interface("eth0").addresses[0] for app in APPS}
    direct = psql(f"SELECT count(*) FROM pg_stat_activity WHERE usename = '{APP_USER}' "
                  f"AND application_name = 'claude-daemon' AND host(client_addr) IN ({', '.join(repr(a) for a in apps)})")
    assert direct == "0"


def test_a_write_through_nginx_lands_in_postgresql():
    alert_id = f"pgbouncer-{RUN_ID}"
    status, _h, body = http("POST", "/api/alerts", {"id": alert_id, "level": "info", "title": "through PgBouncer"})
    assert status == 201, body
    assert psql(f"SELECT level || '|' || title FROM alerts WHERE id = '{alert_id}'") == "info|through PgBouncer"


def test_many_clients_never_get_more_server_connections_than_the_pool():
    settings = config()
    pool = int(settings["default_pool_size"]) + int(settings["reserve_pool_size"])
    # Three times the pool, within the client limit (the daemons hold some of it).
    crowd = min(3 * pool, int(settings["max_client_conn"]) // 2)
    sampler = (f"for i in $(seq 1 150); do runuser -u postgres -- psql -XAtq -d {DB_NAME} -c "
               f"\"SELECT count(*) FROM pg_stat_activity WHERE usename = '{APP_USER}'\"; sleep 0.1; done")
    DATA.check_output("rm -f /tmp/pgbouncer-samples-%s; nohup sh -c %s > /tmp/pgbouncer-samples-%s 2>&1 &",
                      RUN_ID, sampler, RUN_ID)
    try:
        result = clients(clients=crowd, hold=0.5, rounds=3)
        time.sleep(1)
    finally:
        samples = [int(line) for line in DATA.check_output(f"cat /tmp/pgbouncer-samples-{RUN_ID}").split() if line.isdigit()]
    assert result["errors"] == [], result["errors"][:3]
    assert result["ok"] == crowd * 3
    # The server connections PgBouncer sets TimeZone on, as the daemon asks in `options`.
    assert result["timezones"] == ["UTC"]
    assert samples, "the sampler saw nothing"
    assert max(samples) <= pool, (max(samples), pool)


def test_a_client_without_tls_is_refused():
    result = clients(conn={"sslmode": "disable"})
    assert result["ok"] == 0 and result["errors"], result
    assert "SSL required" in result["errors"][0], result


def test_a_wrong_password_is_refused():
    result = clients(conn={"password": "not-the-password-" + RUN_ID})
    assert result["ok"] == 0 and result["errors"], result
    assert "authentication failed" in result["errors"][0], result


def test_only_the_application_database_is_served():
    result = clients(conn={"dbname": "postgres"})
    assert result["ok"] == 0 and "no such database" in result["errors"][0], result
