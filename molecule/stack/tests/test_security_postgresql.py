"""PostgreSQL's hardening, as a client and an operator see it: TLS for every network
client (a plain-text one is refused, a certificate that does not name the address
dialled is refused, TLS below 1.2 and weak TLS 1.2 ciphers are refused), SCRAM only,
peer-only local lines, least-privileged roles and objects, the logging of the
baseline (connections, schema changes, slow statements, pgAudit), private files.

The network clients run on the app hosts (the firewall and pg_hba.conf admit them
only): libpq through python3-psycopg2 with the daemon's own password file, and raw
TLS handshakes with Python's ssl module after PostgreSQL's SSLRequest. Everything
else is read as the postgres superuser on the database host's socket.
"""

import functools
import json
import time
import uuid

import testinfra.utils.ansible_runner

from test_stack import APPS, DATA, INVENTORY

testinfra_hosts = ["stack-data"]
VARS = testinfra.utils.ansible_runner.AnsibleRunner(INVENTORY).get_variables("stack-data")
DB_NAME = VARS["kit_db_name"]
APP_USER = VARS["kit_app_user"]
BACKUP_USER = VARS.get("kit_backup_user", "claude_backup")
MONITOR_USER = VARS.get("kit_monitor_user", "claude_monitor")
OWNER_ROLE = VARS.get("kit_owner_role", "claude_owner")
PORT = int(VARS.get("kit_db_port", 5432))
CA_FILE = VARS.get("kit_tls_ca_file", "/etc/claude-kit/tls/ca.crt")
# The daemon's password file on each app host (role daemon, daemon_config_dir).
PASSWORD_FILE = VARS.get("daemon_config_dir", "/etc/claude-daemon") + "/db_password"
PGAUDIT = str(VARS.get("postgresql_pgaudit", False)).lower() in ("true", "1", "yes")
RUN_ID = uuid.uuid4().hex[:8]

# Runs on an app host. argv[1] is JSON: {"kind": "libpq", "conn": {...}} connects with
# psycopg2 (password read from the daemon's file) and reports the session's TLS;
# {"kind": "handshake", ...} sends PostgreSQL's SSLRequest and tries one TLS handshake.
CLIENT = r"""
import json, socket, ssl, struct, sys
args = json.loads(sys.argv[1])

def libpq():
    import psycopg2
    with open(args["password_file"]) as handle:
        password = handle.read()
    try:
        conn = psycopg2.connect(password=password, connect_timeout=10, **args["conn"])
    except psycopg2.Error as exc:
        return {"ok": False, "error": str(exc).strip()}
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT ssl, version, cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            on, version, cipher = cur.fetchone()
    finally:
        conn.close()
    return {"ok": True, "ssl": on, "version": version, "cipher": cipher}

def handshake():
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(args["ca"])
    # SECLEVEL=0: this client offers what the server must refuse, so a refusal is the server's.
    context.set_ciphers(args["ciphers"] + ":@SECLEVEL=0")
    context.minimum_version = context.maximum_version = getattr(ssl.TLSVersion, args["version"])
    with socket.create_connection((args["host"], args["port"]), timeout=10) as raw:
        raw.sendall(struct.pack("!ii", 8, 80877103))
        if raw.recv(1) != b"S":
            return {"ok": False, "error": "the server declined SSLRequest"}
        try:
            with context.wrap_socket(raw, server_hostname=args["host"]) as tls:
                return {"ok": True, "version": tls.version(), "cipher": tls.cipher()[0]}
        except (ssl.SSLError, OSError) as exc:
            return {"ok": False, "error": str(exc)}

print(json.dumps(libpq() if args["kind"] == "libpq" else handshake()))
"""


@functools.cache
def db_address():
    """The database host's address, the one every client dials (its certificate's IP SAN)."""
    return DATA.interface("eth0").addresses[0]


def psql(query, db=None):
    return DATA.check_output("runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 -d %s -c %s", db or DB_NAME, query)


def rows(query, db=None):
    return [line for line in psql(query, db).splitlines() if line]


def setting(name):
    return psql(f"SELECT current_setting('{name}')")


def on_app(args, app=None):
    """CLIENT on an app host (the first by default): its JSON answer."""
    return json.loads((app or APPS[0]).check_output("python3 -c %s %s", CLIENT, json.dumps(args)))


def libpq(app=None, **conn):
    """A connection as the application role from an app host, with these libpq settings."""
    conn = {"host": db_address(), "port": PORT, "dbname": DB_NAME, "user": APP_USER,
            "application_name": f"security-test-{RUN_ID}", **conn}
    return on_app({"kind": "libpq", "password_file": PASSWORD_FILE, "conn": conn}, app)


def handshake(version, ciphers="DEFAULT"):
    return on_app({"kind": "handshake", "host": db_address(), "port": PORT, "ca": CA_FILE,
                   "version": version, "ciphers": ciphers})


def server_log():
    return DATA.file(f"{setting('log_directory')}/{setting('log_filename')}").content_string


def log_lines(tag, until, timeout=15):
    """The server log's lines holding tag, once until(lines) is true (the collector writes
    asynchronously); the last lines read if it never is."""
    deadline = time.time() + timeout
    while True:
        lines = [line for line in server_log().splitlines() if tag in line]
        if until(lines) or time.time() > deadline:
            return lines
        time.sleep(1)


# --- TLS -------------------------------------------------------------------

def test_tls_is_on_with_tls_1_2_at_least():
    assert setting("ssl") == "on"
    assert setting("ssl_min_protocol_version") in ("TLSv1.2", "TLSv1.3")
    assert setting("ssl_cert_file") == VARS.get("kit_tls_cert_file", "/etc/claude-kit/tls/server.crt")


def test_every_network_line_of_pg_hba_is_hostssl():
    assert rows("SELECT error FROM pg_hba_file_rules WHERE error IS NOT NULL") == []
    assert set(rows("SELECT DISTINCT type FROM pg_hba_file_rules")) <= {"local", "hostssl"}
    assert "hostssl" in rows("SELECT DISTINCT type FROM pg_hba_file_rules")


def test_a_client_without_tls_is_refused_by_pg_hba():
    for app in APPS:
        answer = libpq(app, sslmode="disable")
        assert not answer["ok"]
        assert "no pg_hba.conf entry" in answer["error"] and "no encryption" in answer["error"], answer


def test_a_verify_full_client_dialling_the_servers_address_gets_in_over_tls():
    for app in APPS:
        answer = libpq(app, sslmode="verify-full", sslrootcert=CA_FILE)
        assert answer["ok"], answer
        assert answer["ssl"] is True and answer["version"] in ("TLSv1.2", "TLSv1.3"), answer


def test_a_name_the_certificate_does_not_carry_is_refused_even_at_the_right_address():
    # Same address (hostaddr), so the only difference is the name libpq checks the certificate against.
    wrong = libpq(host="not-in-the-certificate.invalid", hostaddr=db_address(), sslmode="verify-full",
                  sslrootcert=CA_FILE)
    assert not wrong["ok"] and "does not match host name" in wrong["error"], wrong
    # The host's name is one of the certificate's names: the same connection by it succeeds.
    right = libpq(host=DATA.check_output("hostname"), hostaddr=db_address(), sslmode="verify-full",
                  sslrootcert=CA_FILE)
    assert right["ok"] and right["ssl"] is True, right


def test_a_certificate_from_another_ca_is_refused():
    # Debian's public CA bundle: a trusted-looking store that does not hold the kit's CA.
    answer = libpq(sslmode="verify-full", sslrootcert="/etc/ssl/certs/ca-certificates.crt")
    assert not answer["ok"] and "certificate verify failed" in answer["error"], answer


def test_tls_below_1_2_is_refused():
    for version in ("TLSv1", "TLSv1_1"):
        answer = handshake(version)
        # The server's protocol_version alert: the client offered it, the server refused.
        assert not answer["ok"] and "PROTOCOL_VERSION" in answer["error"], (version, answer)


def test_tls_1_2_offers_only_forward_secret_aead_ciphers():
    good = handshake("TLSv1_2", "ECDHE+AESGCM")
    assert good["ok"] and good["version"] == "TLSv1.2", good
    # CBC suites (SHA-1 and SHA-2 MACs) that a default server list accepts for either key
    # type, and AEAD without forward secrecy (RSA key exchange): offered alone, each must
    # end the handshake.
    for weak in ("ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384:ECDHE-RSA-AES256-SHA384",
                 "AES128-GCM-SHA256:AES256-GCM-SHA384"):
        answer = handshake("TLSv1_2", weak)
        assert not answer["ok"] and "HANDSHAKE_FAILURE" in answer["error"], (weak, answer)


def test_the_daemons_sessions_are_encrypted():
    """Every session of the application role with the daemon's name is TLS 1.2+: from PgBouncer on
    127.0.0.1 while it pools them (kit_pgbouncer_enabled, test_pgbouncer.py), else from the app hosts."""
    query = (
        "SELECT host(a.client_addr) || '|' || s.ssl || '|' || coalesce(s.version, '-') "
        "FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) "
        f"WHERE a.usename = '{APP_USER}' AND a.client_addr IS NOT NULL AND a.application_name = 'claude-daemon'"
    )
    pgbouncer = str(VARS.get("kit_pgbouncer_enabled", True)).lower() in ("true", "1", "yes")
    apps = {"127.0.0.1"} if pgbouncer else {app.interface("eth0").addresses[0] for app in APPS}
    deadline = time.time() + 60
    sessions = rows(query)
    # The usage monitor writes every few seconds: each daemon holds a session soon.
    while {row.split("|")[0] for row in sessions} != apps and time.time() < deadline:
        time.sleep(2)
        sessions = rows(query)
    assert {row.split("|")[0] for row in sessions} == apps, sessions
    for row in sessions:
        _addr, encrypted, version = row.split("|")
        assert encrypted == "true" and version in ("TLSv1.2", "TLSv1.3"), row


def test_the_backup_dumps_connect_over_tls():
    # The backup host's dumps (one ran during converge) log in over the network as the
    # backup role; every such login in the server's log says SSL.
    logins = [line for line in server_log().splitlines() if f"connection authorized: user={BACKUP_USER} " in line]
    assert logins, "no login of the backup role in the log"
    assert all("SSL enabled (protocol=TLSv1." in line for line in logins), logins


# --- authentication ----------------------------------------------------------

def test_passwords_are_hashed_with_scram():
    assert setting("password_encryption") == "scram-sha-256"
    stored = rows("SELECT rolname || '|' || left(rolpassword, 14) FROM pg_authid WHERE rolpassword IS NOT NULL")
    assert f"{APP_USER}|SCRAM-SHA-256$" in stored, stored
    assert [row for row in stored if not row.endswith("|SCRAM-SHA-256$")] == []


def test_no_login_role_has_a_null_password():
    assert rows("SELECT rolname FROM pg_authid WHERE rolcanlogin AND rolpassword IS NULL") == []


def test_postgres_and_the_monitoring_role_log_in_by_peer_on_the_socket_only():
    """Their passwords are random values nobody was told (the baseline's no NULL password):
    pg_hba admits them over the local socket only, as the operating-system user (peer) that
    pg_ident maps, so the password is no way in over the network."""
    for role in ("postgres", MONITOR_USER):
        assert psql(f"SELECT left(rolpassword, 14) FROM pg_authid WHERE rolname = '{role}'") == "SCRAM-SHA-256$"
        lines = rows(f"SELECT type || ' ' || auth_method FROM pg_hba_file_rules "
                     f"WHERE '{role}' = ANY(user_name) OR 'all' = ANY(user_name)")
        assert lines and set(lines) == {"local peer"}, (role, lines)


def test_no_authentication_method_but_scram_peer_cert_or_reject():
    methods = set(rows("SELECT DISTINCT auth_method FROM pg_hba_file_rules"))
    assert methods <= {"scram-sha-256", "peer", "cert", "reject"}, methods
    assert not methods & {"trust", "password", "md5", "ident"}


def test_local_lines_are_peer_only():
    assert set(rows("SELECT DISTINCT auth_method FROM pg_hba_file_rules WHERE type = 'local'")) == {"peer"}


def test_authentication_timeout_is_a_minute_at_most():
    assert 0 < int(psql("SELECT setting FROM pg_settings WHERE name = 'authentication_timeout'")) <= 60


def test_the_server_listens_on_named_addresses_only():
    addresses = setting("listen_addresses")
    assert addresses and "*" not in addresses and "0.0.0.0" not in addresses and "::" not in addresses.split(",")
    assert db_address() in addresses.split(",")


# --- privileges --------------------------------------------------------------

def test_only_postgres_may_create_roles_or_databases_or_is_superuser():
    assert rows("SELECT rolname FROM pg_roles WHERE rolsuper OR rolcreaterole OR rolcreatedb") == ["postgres"]


def test_nothing_of_the_application_is_granted_to_public_or_with_grant_option():
    # Tables, views, sequences, functions, schemas and the database itself, outside the
    # system schemas and extensions (pg_stat_statements' view is granted to PUBLIC by the
    # extension, on purpose). A NULL access list is the default one: spelled out here,
    # since a function's default lets PUBLIC execute it.
    findings = rows("""
        WITH own AS (
          SELECT n.oid FROM pg_namespace n
           WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast|temp)'
        ), ext AS (
          SELECT classid, objid FROM pg_depend WHERE deptype = 'e'
        ), obj AS (
          SELECT 'relation ' || c.oid::regclass AS what, c.relowner AS owner,
                 coalesce(c.relacl, acldefault(CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END::"char", c.relowner)) AS acl
            FROM pg_class c JOIN own ON own.oid = c.relnamespace
           WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
             AND (c.oid, 'pg_class'::regclass) NOT IN (SELECT objid, classid FROM ext)
          UNION ALL
          SELECT 'function ' || p.oid::regprocedure, p.proowner, coalesce(p.proacl, acldefault('f', p.proowner))
            FROM pg_proc p JOIN own ON own.oid = p.pronamespace
           WHERE (p.oid, 'pg_proc'::regclass) NOT IN (SELECT objid, classid FROM ext)
          UNION ALL
          SELECT 'schema ' || n.nspname, n.nspowner, coalesce(n.nspacl, acldefault('n', n.nspowner))
            FROM pg_namespace n JOIN own ON own.oid = n.oid
          UNION ALL
          SELECT 'database ' || d.datname, d.datdba, coalesce(d.datacl, acldefault('d', d.datdba))
            FROM pg_database d WHERE d.datname = current_database()
        )
        SELECT obj.what || ': ' || a.privilege_type
               || CASE WHEN a.grantee = 0 THEN ' to PUBLIC' ELSE ' WITH GRANT OPTION to ' || a.grantee::regrole END
          FROM obj, aclexplode(obj.acl) a
         WHERE a.grantee = 0 OR (a.is_grantable AND a.grantee <> obj.owner)
    """)
    assert findings == []


def test_functions_the_owner_creates_later_are_not_executable_by_public():
    # The default privilege the role sets: a function a migration adds is private until granted.
    assert psql(
        "SELECT count(*) FILTER (WHERE a.grantee = 0) || '|' || count(*) FROM pg_default_acl da, aclexplode(da.defaclacl) a "
        f"WHERE da.defaclrole = '{OWNER_ROLE}'::regrole AND da.defaclnamespace = 0 AND da.defaclobjtype = 'f'"
    ) == "0|1"


def test_no_security_definer_function_in_the_application_schemas():
    assert rows("""
        SELECT p.oid::regprocedure FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE p.prosecdef AND n.nspname NOT IN ('pg_catalog', 'information_schema')
           AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                                                     AND d.deptype = 'e')
    """) == []


def test_no_untrusted_procedural_language_in_any_database():
    for db in rows("SELECT datname FROM pg_database WHERE datallowconn", "postgres"):
        assert rows("SELECT lanname FROM pg_language WHERE NOT lanpltrusted AND lanname NOT IN ('internal', 'c')",
                    db) == [], db


# --- logging -------------------------------------------------------------------

def test_the_logging_of_the_baseline_is_on():
    assert setting("logging_collector") == "on"
    assert setting("log_connections") == "on"
    assert setting("log_disconnections") == "on"
    assert setting("log_statement") in ("ddl", "mod", "all")
    assert int(psql("SELECT setting FROM pg_settings WHERE name = 'log_min_duration_statement'")) >= 0
    prefix = setting("log_line_prefix")
    # Time, process, user, database, application and client (host, with or without port).
    assert ("%m" in prefix or "%t" in prefix) and "%p" in prefix
    assert all(escape in prefix for escape in ("%u", "%d", "%a")) and ("%r" in prefix or "%h" in prefix)


def test_a_network_login_is_logged_with_who_from_where_and_its_tls():
    app_name = f"security-test-{RUN_ID}-login"
    assert libpq(sslmode="verify-full", sslrootcert=CA_FILE, application_name=app_name)["ok"]
    app_address = APPS[0].interface("eth0").addresses[0]
    mine = log_lines(app_name, lambda lines: any("disconnection:" in line for line in lines))
    authorized = [line for line in mine if "connection authorized:" in line]
    assert authorized and "SSL enabled (protocol=TLSv1." in authorized[-1], mine
    # The prefix: time first, then [pid], user@database and the client's address.
    assert authorized[-1][:4].isdigit() and " [" in authorized[-1], authorized
    assert f"{APP_USER}@{DB_NAME}" in authorized[-1] and app_address in authorized[-1], authorized
    assert any("disconnection:" in line and app_name in line.split(" LOG:")[0] for line in mine), mine


def test_schema_changes_and_slow_statements_are_logged():
    tag = f"security_probe_{RUN_ID}"
    psql(f"CREATE TEMP TABLE {tag} (x int)", "postgres")
    # Not DDL, so log_statement leaves it alone and the duration line carries the statement.
    threshold_ms = int(psql("SELECT setting FROM pg_settings WHERE name = 'log_min_duration_statement'"))
    psql(f"SELECT pg_sleep({(threshold_ms + 300) / 1000}) AS {tag}", "postgres")
    lines = log_lines(tag, lambda found: any("duration:" in line for line in found))
    assert any("statement: CREATE TEMP TABLE" in line for line in lines), lines
    assert any("duration:" in line and "pg_sleep" in line for line in lines), lines


def test_pgaudit_records_schema_and_role_changes():
    assert PGAUDIT, "the stack scenario turns postgresql_pgaudit on (molecule.yml) so that this runs"
    assert "pgaudit" in setting("shared_preload_libraries")
    assert rows("SELECT extname FROM pg_extension WHERE extname = 'pgaudit'") == ["pgaudit"]
    role = f"audit_probe_{RUN_ID}"
    psql(f"CREATE ROLE {role} NOLOGIN", "postgres")
    psql(f"DROP ROLE {role}", "postgres")
    table = f"audit_probe_{RUN_ID}_t"
    psql(f"CREATE TABLE {table} (x int)")
    psql(f"DROP TABLE {table}")
    audited = log_lines(f"_{RUN_ID}", lambda found: sum("AUDIT: SESSION" in line for line in found) >= 4)
    audited = [line for line in audited if "AUDIT: SESSION" in line]
    for expected in (",ROLE,CREATE ROLE,", ",ROLE,DROP ROLE,", ",DDL,CREATE TABLE,", ",DDL,DROP TABLE,"):
        assert any(expected in line for line in audited), (expected, audited)


# --- files ---------------------------------------------------------------------

def private(path, mode):
    f = DATA.file(path)
    assert f.exists, path
    assert (f.user, f.group) == ("postgres", "postgres"), (path, f.user, f.group)
    assert f.mode & 0o077 == 0 and f.mode == mode, (path, oct(f.mode))


def test_the_data_and_log_directories_are_postgres_alone():
    private(setting("data_directory"), 0o700)
    private(setting("log_directory"), 0o700)
    private(f"{setting('log_directory')}/{setting('log_filename')}", 0o600)
    # What every boot applies (systemd-tmpfiles-setup.service), for this one file name, which
    # tmpfiles looks up as a boot does (/etc before /usr/lib): Debian's own rule would make the
    # log directory 1775 root:postgres again; the kit's file of the same name replaces it.
    DATA.check_output("systemd-tmpfiles --create postgresql-common.conf")
    private(setting("log_directory"), 0o700)
    assert DATA.file("/run/postgresql").mode == 0o2775


def test_the_configuration_the_kit_renders_is_postgres_alone():
    hba = setting("hba_file")
    conf_dir = hba.rsplit("/", 1)[0]
    for path in (hba, setting("ident_file"), f"{conf_dir}/conf.d/50-claude-kit.conf"):
        private(path, 0o600)


def test_debians_configuration_files_of_the_cluster_are_postgres_alone():
    # Debian creates them 0644; the server (as postgres) and root's pg_ctlcluster read them.
    conf_dir = setting("config_file").rsplit("/", 1)[0]
    assert setting("config_file") == f"{conf_dir}/postgresql.conf"
    for name in ("postgresql.conf", "pg_ctl.conf", "start.conf", "environment"):
        private(f"{conf_dir}/{name}", 0o600)
    # The cluster still answers Debian's tools run as root.
    assert " online " in DATA.check_output("pg_lsclusters --no-header")


def test_the_server_reads_its_key_through_the_key_group_only():
    key = DATA.file(setting("ssl_key_file"))
    assert key.user == "root" and key.mode & 0o007 == 0, oct(key.mode)
    assert key.group in DATA.check_output("id -Gn postgres").split()


# --- the daemon's own connection --------------------------------------------------

# Runs inside the daemon's container, with the daemon's own configuration (its
# environment and secret files): the connection parameters its pool uses, a
# connection with them, and one to the same address under a name the server's
# certificate does not carry.
DAEMON_PROBE = r"""
import json, os, socket
import psycopg2
from claude_daemon import config, stores
params = stores.PgStore(config.load(os.environ))._params
answer = {"sslmode": params.get("sslmode"), "sslrootcert": params.get("sslrootcert")}
psycopg2.connect(**params).close()
try:
    psycopg2.connect(**dict(params, host="not-in-the-certificate.invalid",
                            hostaddr=socket.gethostbyname(params["host"]))).close()
    answer["wrong_name"] = "connected"
except psycopg2.OperationalError as exc:
    answer["wrong_name"] = str(exc).strip()
print(json.dumps(answer))
"""


def test_the_daemon_verifies_the_servers_certificate_and_name():
    container = VARS.get("kit_daemon_container_name", "claude-daemon")
    ca_digest = DATA.check_output("sha256sum %s", CA_FILE).split()[0]
    for app in APPS:
        answer = json.loads(app.check_output("docker exec %s python3 -c %s", container, DAEMON_PROBE))
        assert answer["sslmode"] == "verify-full", answer
        # The CA it verifies against is the kit's, as mounted into the container.
        assert app.check_output("docker exec %s sha256sum %s", container, answer["sslrootcert"]).split()[0] \
            == ca_digest, answer
        assert "does not match host name" in answer["wrong_name"], answer
