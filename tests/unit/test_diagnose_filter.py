"""Filters of the troubleshooting runbook (playbooks/diagnose.yml): pure logic."""

import base64
import hashlib
import hmac

import pytest
from conftest import load

diagnose = load("plugins/filter/diagnose.py", "diagnose_filter")

# Made once by PostgreSQL 15 itself (a throwaway cluster, password_encryption
# scram-sha-256 / md5; CREATE ROLE ... PASSWORD '...'; SELECT rolpassword FROM pg_authid).
PASSWORD = "correct horse battery staple"
VERIFIER = ("SCRAM-SHA-256$4096:lHsQTGgrZyfK1SH6lcX9Sw==$rOyY0nAbtDQs9ap6yQjEz7i3qlkXXgUxY/+Y6b8mL78="
            ":GIymxxuqOuWSe3qte6eca45oWRJA8WCezgbvUv7sOiY=")
MD5_VERIFIER = "md5383319ccd74dbac3a20184ecef55206d"
# Password 'pässwörd<NO-BREAK SPACE><LATIN SMALL LIGATURE FI>': SASLprep makes it 'pässwörd fi'.
UNICODE_VERIFIER = ("SCRAM-SHA-256$4096:heINyvgt4CfOTrvM/Nn/dw==$boqTmkU/SnGGLW0fVQWz2V/dUnQ1JErzRx/ZIxbU2EM="
                    ":O3IxsDskkiPdQ5AwZYeLt9drOCpF1cQtG8GLKAIEjWQ=")
# Password 'ab<U+0080>cd<U+200E>é': prohibited characters, so PostgreSQL hashes the raw bytes.
RAW_VERIFIER = ("SCRAM-SHA-256$4096:evby+pm69DMgX5p9gYzpUA==$5IbjpClthY1ugMVs1UU/OBkIlPD3f2kp+g203J1Nq1c="
                ":woPI2gRySSdnMAGcVszDIAccQx4sIka+1MUGv4Kppww=")


def make_verifier(password, salt=b"0123456789abcdef", iterations=4096):
    """RFC 5802 / 7677, written out independently of the filter (ASCII passwords only)."""
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    parts = [base64.b64encode(raw).decode() for raw in (salt, stored_key, server_key)]
    return f"SCRAM-SHA-256${iterations}:{parts[0]}${parts[1]}:{parts[2]}"


# --- scram_verify ----------------------------------------------------------
def test_scram_postgresql_verifier_matches_its_password():
    assert diagnose.scram_verify(VERIFIER, PASSWORD) == "match"


@pytest.mark.parametrize("wrong", ["correct horse battery stapler", "", "Correct horse battery staple", PASSWORD + " "])
def test_scram_wrong_password(wrong):
    assert diagnose.scram_verify(VERIFIER, wrong) in ("mismatch", "no password in the inventory")


def test_scram_wrong_password_is_mismatch():
    assert diagnose.scram_verify(VERIFIER, "x" * 32) == "mismatch"


def test_scram_saslprep_as_postgresql_does():
    assert diagnose.scram_verify(UNICODE_VERIFIER, "pässwörd\u00a0\ufb01") == "match"
    # The prepared form is the same password to PostgreSQL.
    assert diagnose.scram_verify(UNICODE_VERIFIER, "pässwörd fi") == "match"
    assert diagnose.scram_verify(UNICODE_VERIFIER, "passwort fi") == "mismatch"


def test_scram_prohibited_characters_use_the_raw_bytes():
    assert diagnose.saslprep("ab\u0080cd\u200e\u00e9") == "ab\u0080cd\u200e\u00e9".encode()
    assert diagnose.scram_verify(RAW_VERIFIER, "ab\u0080cd\u200e\u00e9") == "match"


def test_saslprep_ascii_untouched_and_mapping():
    assert diagnose.saslprep("a\tb") == b"a\tb"
    assert diagnose.saslprep("a\u00adb\u2003c") == b"ab c"  # soft hyphen dropped, em space -> space


@pytest.mark.parametrize("iterations", [1, 4096, 10000])
def test_scram_rfc_verifier_of_any_iteration_count(iterations):
    verifier = make_verifier("s3cret-Pa55word!", iterations=iterations)
    assert diagnose.scram_verify(verifier, "s3cret-Pa55word!") == "match"
    assert diagnose.scram_verify(verifier, "s3cret-Pa55word?") == "mismatch"


def test_scram_server_key_must_match_too():
    stored_ok = make_verifier("pw").rsplit(":", 1)[0] + ":" + base64.b64encode(b"\0" * 32).decode()
    assert diagnose.scram_verify(stored_ok, "pw") == "mismatch"


def test_scram_md5_verifier_is_not_scram():
    assert diagnose.scram_verify(MD5_VERIFIER, PASSWORD).startswith("not SCRAM")
    assert "md5" in diagnose.scram_verify(MD5_VERIFIER, PASSWORD)


@pytest.mark.parametrize("verifier", [
    "SCRAM-SHA-256$4096:c2FsdA==$not*base64:AAAA",
    "SCRAM-SHA-256$4096:c2FsdA==$" + base64.b64encode(b"x" * 31).decode() + ":" + base64.b64encode(b"x" * 32).decode(),
    "SCRAM-SHA-256$0:c2FsdA==$" + base64.b64encode(b"x" * 32).decode() + ":" + base64.b64encode(b"x" * 32).decode(),
    "SCRAM-SHA-256$99999999999:c2FsdA==$" + base64.b64encode(b"x" * 32).decode() + ":" + base64.b64encode(b"x" * 32).decode(),
    "SCRAM-SHA-256$4096:c2FsdA==",
    "SCRAM-SHA-256$abc:c2FsdA==$AAAA:AAAA",
    "SCRAM-SHA-256$4096:c2FsdA=$" + base64.b64encode(b"x" * 32).decode() + ":" + base64.b64encode(b"x" * 32).decode(),
])
def test_scram_malformed(verifier):
    assert diagnose.scram_verify(verifier, PASSWORD).startswith("malformed")


def test_scram_other_formats_and_empty():
    assert diagnose.scram_verify("SCRAM-SHA-1$4096:abc", PASSWORD).startswith("not SCRAM")
    assert diagnose.scram_verify("plaintext", PASSWORD).startswith("not SCRAM")
    assert diagnose.scram_verify(None, PASSWORD) == "no password"
    assert diagnose.scram_verify("", PASSWORD) == "no password"
    assert diagnose.scram_verify(VERIFIER, None) == "no password in the inventory"
    assert diagnose.scram_verify(12, PASSWORD).startswith("malformed")


def test_scram_answers_never_contain_either_secret():
    answers = [diagnose.scram_verify(v, p) for v in (VERIFIER, MD5_VERIFIER, VERIFIER[:-3], "SCRAM-SHA-256$1:x")
               for p in (PASSWORD, "wrong")]
    for answer in answers:
        assert PASSWORD not in answer and "lHsQTGgr" not in answer and "383319cc" not in answer


# --- hba_decision ------------------------------------------------------------
def rule(line, kind, database, user, address=None, netmask=None, method="scram-sha-256", error=None):
    return {"line_number": line, "type": kind, "database": database, "user_name": user, "address": address,
            "netmask": netmask, "auth_method": method, "error": error}


# As PostgreSQL 15's pg_hba_file_rules shows them (read from a throwaway cluster).
KIT_RULES = [
    rule(6, "local", ["all"], ["postgres"], method="peer"),
    rule(10, "local", ["claude_daemon"], ["claude_monitor"], method="peer"),
    rule(13, "host", ["claude_daemon"], ["claude_app"], "172.30.57.5", "255.255.255.255"),
    rule(14, "host", ["claude_daemon"], ["claude_app"], "172.30.57.6", "255.255.255.255"),
    rule(18, "host", ["claude_daemon"], ["claude_backup"], "172.30.57.8", "255.255.255.255"),
]


def test_hba_kit_rules_allow_each_app_host_with_scram():
    decision = diagnose.hba_decision(KIT_RULES, "claude_daemon", "claude_app", "172.30.57.6")
    assert decision["ok"] and decision["line"] == 14 and decision["method"] == "scram-sha-256"
    assert "line 14: host claude_daemon claude_app 172.30.57.6/32 scram-sha-256" in decision["text"]


def test_hba_no_line_matches_is_rejected():
    for args in [("claude_daemon", "claude_app", "172.30.57.7"), ("other_db", "claude_app", "172.30.57.5"),
                 ("claude_daemon", "someone", "172.30.57.5")]:
        decision = diagnose.hba_decision(KIT_RULES, *args)
        assert not decision["ok"] and decision["line"] is None
        assert decision["text"] == "no line matches -> rejected"


def test_hba_first_match_wins():
    rules = [rule(1, "host", ["all"], ["all"], "10.0.0.0", "255.0.0.0", method="reject"),
             rule(2, "host", ["claude_daemon"], ["claude_app"], "10.1.2.3", "255.255.255.255")]
    decision = diagnose.hba_decision(rules, "claude_daemon", "claude_app", "10.1.2.3")
    assert decision["line"] == 1 and decision["method"] == "reject" and not decision["ok"]
    assert "rejects" in decision["text"]
    rules[1]["line_number"] = 0
    assert diagnose.hba_decision(rules, "claude_daemon", "claude_app", "10.1.2.3")["ok"]


@pytest.mark.parametrize("method,word", [("trust", "without any password"), ("password", "clear text"),
                                         ("md5", "md5"), ("cert", "does not take"), ("ident", "does not take")])
def test_hba_weak_or_unusable_methods_are_findings(method, word):
    decision = diagnose.hba_decision([rule(3, "host", ["all"], ["all"], "0.0.0.0", "0.0.0.0", method=method)],
                                     "claude_daemon", "claude_app", "192.0.2.1")
    assert not decision["ok"] and decision["method"] == method and word in decision["text"]


def test_hba_local_lines_never_match_tcp():
    rules = [rule(1, "local", ["all"], ["all"], method="trust")]
    assert diagnose.hba_decision(rules, "claude_daemon", "claude_app", "127.0.0.1")["line"] is None


def test_hba_lines_with_an_error_are_skipped():
    rules = [rule(1, None, None, None, error="end-of-line before role specification"),
             rule(2, "host", ["all"], ["all"], "192.0.2.0", "255.255.255.0")]
    assert diagnose.hba_decision(rules, "d", "u", "192.0.2.9")["line"] == 2


def test_hba_database_keywords_and_lists():
    def line_for(database_entry, database="claude_daemon", user="claude_app", member_of=()):
        rules = [rule(7, "host", database_entry, ["all"], "192.0.2.0", "255.255.255.0")]
        return diagnose.hba_decision(rules, database, user, "192.0.2.1", member_of=member_of)["line"]

    assert line_for(["other", "claude_daemon"]) == 7
    assert line_for(["other", "more"]) is None
    assert line_for(["all"]) == 7
    assert line_for(["replication"]) is None
    assert line_for(["sameuser"]) is None
    assert line_for(["sameuser"], database="claude_app") == 7
    assert line_for(["samerole"], member_of=["claude_daemon"]) == 7
    assert line_for(["samerole"]) is None
    assert line_for(["/^claude_"]) == 7  # PostgreSQL 16 regular expressions
    assert line_for("{other,claude_daemon}") == 7  # the array as text


def test_hba_user_groups():
    rules = [rule(100, "host", ["all"], ["+grp"], "10.0.0.0", "255.0.0.0")]
    assert diagnose.hba_decision(rules, "d", "claude_app", "10.9.9.9")["line"] is None
    assert diagnose.hba_decision(rules, "d", "claude_app", "10.9.9.9", member_of=["grp"])["line"] == 100
    assert diagnose.hba_decision(rules, "d", "grp", "10.9.9.9")["line"] == 100


@pytest.mark.parametrize("address,netmask,inside,outside", [
    ("172.30.57.0", "255.255.255.0", "172.30.57.200", "172.30.58.1"),  # netmask form (the view's)
    ("172.30.57.0/24", None, "172.30.57.200", "172.30.58.1"),  # CIDR form
    ("172.30.57.5", None, "172.30.57.5", "172.30.57.6"),  # a bare address: that host
    ("10.0.0.0", "255.0.0.0", "10.255.0.1", "11.0.0.1"),
    ("0.0.0.0", "0.0.0.0", "203.0.113.9", "::1"),
    ("::1", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "::1", "::2"),  # IPv6, as the view prints it
    ("2001:db8::", "ffff:ffff::", "2001:db8:ff::1", "2001:db9::1"),
    ("2001:db8::/32", None, "2001:db8::42", "127.0.0.1"),
])
def test_hba_address_forms(address, netmask, inside, outside):
    rules = [rule(5, "host", ["all"], ["all"], address, netmask)]
    assert diagnose.hba_decision(rules, "d", "u", inside)["line"] == 5
    assert diagnose.hba_decision(rules, "d", "u", outside)["line"] is None


def test_hba_all_samehost_samenet():
    server = ["127.0.0.1/8", "172.30.57.2/24"]
    assert diagnose.hba_decision([rule(1, "host", ["all"], ["all"], "all")], "d", "u", "198.51.100.1")["line"] == 1
    samehost = [rule(1, "host", ["all"], ["all"], "samehost")]
    assert diagnose.hba_decision(samehost, "d", "u", "172.30.57.2", server_addresses=server)["line"] == 1
    assert diagnose.hba_decision(samehost, "d", "u", "172.30.57.3", server_addresses=server)["line"] is None
    samenet = [rule(1, "host", ["all"], ["all"], "samenet", method="trust")]
    decision = diagnose.hba_decision(samenet, "d", "u", "172.30.57.3", server_addresses=server)
    assert decision["line"] == 1 and not decision["ok"] and "trust" in decision["text"]
    assert diagnose.hba_decision(samenet, "d", "u", "172.30.58.3", server_addresses=server)["line"] is None


def test_hba_ssl_line_types():
    rules = [rule(1, "hostssl", ["all"], ["all"], "all", method="reject"),
             rule(2, "hostnossl", ["all"], ["all"], "all", method="md5"),
             rule(3, "hostgssenc", ["all"], ["all"], "all", method="trust"),
             rule(4, "host", ["all"], ["all"], "all")]
    assert diagnose.hba_decision(rules, "d", "u", "192.0.2.1", ssl=True)["line"] == 1
    assert diagnose.hba_decision(rules, "d", "u", "192.0.2.1", ssl=False)["line"] == 2
    assert diagnose.hba_decision(rules[2:], "d", "u", "192.0.2.1")["line"] == 4


def test_hba_host_names_need_the_clients_name():
    rules = [rule(1, "host", ["d"], ["u"], "app1.example.org"), rule(2, "host", ["d"], ["u"], ".example.net")]
    assert diagnose.hba_decision(rules, "d", "u", "192.0.2.1", client_names=["APP1.example.org"])["line"] == 1
    assert diagnose.hba_decision(rules, "d", "u", "192.0.2.1", client_names=["a.example.net"])["line"] == 2
    assert diagnose.hba_decision(rules, "d", "u", "192.0.2.1", client_names=["other"])["line"] is None


def test_hba_rules_are_taken_in_line_order_and_a_bad_address_is_said():
    rules = [rule(9, "host", ["all"], ["all"], "all", method="reject"), rule(2, "host", ["all"], ["all"], "all")]
    assert diagnose.hba_decision(rules, "d", "u", "192.0.2.1")["line"] == 2
    assert "not an IP address" in diagnose.hba_decision(rules, "d", "u", "app1")["text"]


# --- listens_on --------------------------------------------------------------
@pytest.mark.parametrize("listen,address,expected", [
    ("*", "172.30.57.2", True),
    ("localhost,172.30.57.2", "172.30.57.2", True),
    ("localhost", "172.30.57.2", False),
    ("localhost", "127.0.0.1", True),
    ("0.0.0.0", "172.30.57.2", True),
    ("0.0.0.0", "2001:db8::1", False),
    ("::", "2001:db8::1", True),
    ("localhost, db.example.org", "172.30.57.2", None),
    ("", "172.30.57.2", False),
    ("db.example.org", "db.example.org", True),
])
def test_listens_on(listen, address, expected):
    assert diagnose.listens_on(listen, address) is expected


# --- schema files --------------------------------------------------------------
def read(name):
    with open(diagnose.__file__.rsplit("/plugins/", 1)[0] + "/files/" + name, encoding="utf-8") as handle:
        return handle.read()


def test_schema_tables_of_the_kits_files():
    # schema.sql's comment "... its CREATE TABLE statements fail" is not a table.
    assert diagnose.schema_tables(read("schema.sql")) == ["users", "usage_data", "alerts", "predictions"]
    assert diagnose.schema_tables(read("0002_fallback_sync.sql")) == ["fallback_sync_log"]


def test_schema_tables_parser_forms():
    text = """
    -- CREATE TABLE commented_out (id int);
    /* CREATE TABLE IF NOT EXISTS block_comment (id int); */
    CREATE TABLE plain (id int);
    create table if not exists Lower_Case (id int);
    CREATE TABLE IF NOT EXISTS public.qualified (id int);
    CREATE TABLE IF NOT EXISTS audit.elsewhere (id int);
    CREATE TABLE "Quoted Name" (id int);
    CREATE UNLOGGED TABLE scratch (id int);
    CREATE TEMP TABLE temporary_one (id int);
    CREATE GLOBAL TEMPORARY TABLE temporary_two (id int);
    INSERT INTO notes VALUES ('CREATE TABLE in_a_string (x int)');
    DO $body$ BEGIN EXECUTE 'x'; END $body$;
    DO $$ BEGIN CREATE TABLE in_dollar_quotes (id int); END $$;
    CREATE TABLE plain (id int);
    CREATE TABLE
        spread_over_lines (id int);
    """
    assert diagnose.schema_tables(text) == ["plain", "lower_case", "qualified", "audit.elsewhere", "Quoted Name",
                                            "scratch", "spread_over_lines"]
    assert diagnose.schema_tables("") == [] and diagnose.schema_tables(None) == []


def test_schema_version_follows_the_migration_modules_names():
    assert diagnose.schema_version("schema.sql") == 1
    assert diagnose.schema_version("/x/0002_fallback_sync.sql") == 2
    assert diagnose.schema_version("0013_add-index.sql") == 13
    assert diagnose.schema_version("notes.sql") is None and diagnose.schema_version("02_x.sql") is None


FILES = {
    "schema.sql": "CREATE TABLE IF NOT EXISTS users (id int); CREATE TABLE IF NOT EXISTS predictions (id int);",
    "0002_log.sql": "CREATE TABLE IF NOT EXISTS fallback_sync_log (id int);",
    "0003_more.sql": "ALTER TABLE predictions ADD COLUMN x int; CREATE TABLE IF NOT EXISTS later (id int);",
}


def test_schema_missing_and_what_brings_each_back():
    missing = diagnose.schema_missing(FILES, ["users", "fallback_sync_log", "claude_kit.schema_migrations"], pending=[3])
    assert missing == [
        {"table": "predictions", "file": "schema.sql", "version": 1, "pending": False, "altered_by": ["0003_more.sql"]},
        {"table": "later", "file": "0003_more.sql", "version": 3, "pending": True, "altered_by": []},
    ]
    # Only what no pending migration creates is re-run, once per file, in version order.
    assert diagnose.schema_rerun(missing) == ["schema.sql"]
    assert diagnose.schema_rerun(diagnose.schema_missing(FILES, [])) == ["schema.sql", "0002_log.sql", "0003_more.sql"]
    assert diagnose.schema_missing(FILES, ["users", "predictions", "fallback_sync_log", "later"]) == []


def test_schema_copy_differences():
    kit = {"schema.sql": "aaa", "0002_log.sql": "bbb", "0003_more.sql": "ccc"}
    host = [{"path": "/var/lib/claude-kit/schema/schema.sql", "checksum": "aaa"},
            {"path": "/var/lib/claude-kit/schema/0002_log.sql", "checksum": "old"},
            {"path": "/var/lib/claude-kit/schema/0009_gone.sql", "checksum": "zzz"}]
    assert diagnose.schema_copy_differences(kit, host, "/var/lib/claude-kit/schema/") == {
        "missing": ["0003_more.sql"], "differs": ["0002_log.sql"], "extra": ["0009_gone.sql"]}
    assert diagnose.schema_copy_differences(kit, [], "/d")["missing"] == ["0002_log.sql", "0003_more.sql", "schema.sql"]


def test_pg_clusters():
    lines = ["15  main    5432 online postgres /var/lib/postgresql/15/main /var/log/postgresql/postgresql-15-main.log",
             "17  test    5433 down   postgres /var/lib/postgresql/17/test /var/log/postgresql/postgresql-17-test.log",
             "garbage"]
    clusters = diagnose.pg_clusters(lines)
    assert clusters[0] == {"version": "15", "name": "main", "port": 5432, "status": "online",
                           "log": "/var/log/postgresql/postgresql-15-main.log"}
    assert [c["status"] for c in clusters] == ["online", "down"]


# --- case 1 rows ----------------------------------------------------------------
def healthy_connection(**changes):
    data = {
        "host": "db", "db": "claude_daemon", "user": "claude_app", "owner": "claude_owner",
        "service_name": "postgresql@15-main.service",
        "service": {"ActiveState": "active", "SubState": "running", "Result": "success"},
        "cluster": {"version": "15", "name": "main", "port": 5432, "log": "/var/log/postgresql/postgresql-15-main.log"},
        "available": True,
        "settings": {"listen_addresses": "localhost,172.30.57.2", "port": "5432", "ssl": "on"},
        "ssl": True, "db_exists": True,
        "role": {"rolcanlogin": True, "rolvaliduntil": None, "rolconnlimit": -1},
        "member_of": [], "password": "match", "hba_rules": KIT_RULES,
        "server_addresses": ["127.0.0.1/8", "172.30.57.2/24"],
        "clients": [{"host": "app1", "address": "172.30.57.5", "names": ["app1"]},
                    {"host": "app2", "address": "172.30.57.6", "names": ["app2"]}],
        "grants_missing": [], "grants_counted": {"tables": 5, "sequences": 3},
        "targets": [{"address": "172.30.57.2", "port": "5432", "outcome": "ok"},
                    {"address": "172.30.57.2", "port": "5432", "outcome": "ok"}],
        "now": "2026-03-01 10:00:00.123+00",
    }
    data.update(changes)
    return data


def findings(rows):
    return [r for r in rows if not r["ok"]]


def test_connection_healthy_has_no_finding_and_says_what_it_checked():
    rows = diagnose.connection_checks(healthy_connection())
    assert findings(rows) == []
    checks = {(r["check"], r["host"]) for r in rows}
    assert checks == {("server", "db"), ("listen", "db"), ("role", "db"), ("password", "db"), ("pg_hba", "app1"),
                      ("pg_hba", "app2"), ("grants", "db")}
    assert [r["result"] for r in rows if r["check"] == "listen"] == [
        "listen_addresses = 'localhost,172.30.57.2', port = 5432: covers 172.30.57.2:5432"]
    assert all(r["case"] == "connection failed" and r["why"] == "" and r["next"] == "" for r in rows)


def test_connection_server_stopped():
    rows = diagnose.connection_checks(healthy_connection(
        available=False, service={"ActiveState": "inactive", "SubState": "dead", "Result": "success"}))
    found = findings(rows)
    assert [r["check"] for r in found] == ["server"]
    assert "inactive (dead)" in found[0]["result"] and "fix_connection" in found[0]["next"]
    # Nothing else can be known without the server: said, but no finding.
    assert not [r for r in rows if r["check"] in ("role", "grants", "pg_hba")]
    assert rows[-1]["state"] == "NOT CHECKED" and rows[-1]["ok"]


def test_connection_no_cluster():
    rows = diagnose.connection_checks(healthy_connection(cluster=None, available=False))
    assert findings(rows)[0]["result"].startswith("no PostgreSQL cluster")


def test_connection_listen_and_port():
    rows = diagnose.connection_checks(healthy_connection(settings={"listen_addresses": "localhost", "port": "5433"}))
    listen = [r for r in findings(rows) if r["check"] == "listen"][0]
    assert "port 5432" in listen["result"] and "172.30.57.2" in listen["result"]


def test_connection_role_missing():
    rows = diagnose.connection_checks(healthy_connection(role=None, password=None, grants_missing=None))
    found = findings(rows)
    assert [r["result"] for r in found] == ["role claude_app does not exist"]
    assert "fix_connection" in found[0]["next"] and "SQLite" in found[0]["why"]
    grants = [r for r in rows if r["check"] == "grants"][0]
    assert grants["ok"] and grants["state"] == "NOT CHECKED" and "does not exist" in grants["result"]
    assert "NOT CHECKED" in "\n".join(diagnose.diagnose_table(rows))


def test_connection_role_cannot_log_in_or_expired():
    role = {"rolcanlogin": False, "rolvaliduntil": "2026-01-01T00:00:00+00:00", "rolconnlimit": 0}
    result = findings(diagnose.connection_checks(healthy_connection(role=role)))[0]["result"]
    assert "NOLOGIN" in result and "expired" in result and "connection limit is 0" in result
    future = {"rolcanlogin": True, "rolvaliduntil": "2099-01-01T00:00:00+00:00", "rolconnlimit": -1}
    assert findings(diagnose.connection_checks(healthy_connection(role=future))) == []


@pytest.mark.parametrize("state,words", [("mismatch", "is not the inventory's"), ("no password", "no password at all"),
                                         ("not SCRAM: the password is stored as an md5 hash", "md5")])
def test_connection_password(state, words):
    found = findings(diagnose.connection_checks(healthy_connection(password=state)))
    assert len(found) == 1 and found[0]["check"] == "password" and words in found[0]["result"]
    assert "password authentication failed" in found[0]["why"]


PGB_VERIFIER = "SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy"
PGB_OTHER = "SCRAM-SHA-256$4096:bmV3$c3RvcmVk:c2VydmVy"


@pytest.mark.parametrize("userlist,exists,state", [
    (f'"claude_app" "{PGB_VERIFIER}"\n', True, "match"),
    (f'"other" "{PGB_VERIFIER}"\n"claude_app" "{PGB_OTHER}"\n', True, "mismatch"),
    (f'"claude_app2" "{PGB_VERIFIER}"\n', True, "missing"),
    ("", True, "missing"),
    ("", False, "no file"),
])
def test_pgbouncer_auth_state(userlist, exists, state):
    assert diagnose.pgbouncer_auth_state(userlist, "claude_app", PGB_VERIFIER, exists) == state


def test_pgbouncer_auth_state_reads_doubled_quotes_and_needs_a_verifier():
    assert diagnose.pgbouncer_auth_state('"a""b" "x""y"', 'a"b', 'x"y') == "match"
    assert diagnose.pgbouncer_auth_state(f'"claude_app" "{PGB_VERIFIER}"', "claude_app", None) is None


def test_connection_pgbouncer_row_says_nothing_of_the_verifiers():
    rows = diagnose.connection_checks(healthy_connection(pgbouncer="match"))
    assert findings(rows) == [] and [r["check"] for r in rows].count("pgbouncer") == 1
    for state, words in (("mismatch", "another SCRAM verifier"), ("missing", "no line for claude_app"),
                         ("no file", "does not exist")):
        found = findings(diagnose.connection_checks(healthy_connection(pgbouncer=state)))
        assert len(found) == 1 and found[0]["check"] == "pgbouncer" and words in found[0]["result"], found
        assert "fix_connection" in found[0]["next"] and "SQLite" in found[0]["why"]
        assert "SCRAM-SHA-256$" not in str(found)
    # Without PgBouncer there is no row.
    assert "pgbouncer" not in [r["check"] for r in diagnose.connection_checks(healthy_connection())]


def test_connection_hba_without_a_line_for_an_app_host():
    rows = diagnose.connection_checks(healthy_connection(hba_rules=KIT_RULES[:3]))
    found = findings(rows)
    assert len(found) == 1 and found[0]["host"] == "app2" and "no line matches -> rejected" in found[0]["result"]
    assert "no pg_hba.conf entry" in found[0]["why"]


def test_connection_hba_error_line():
    rules = KIT_RULES + [rule(20, None, None, None, error="invalid authentication method \"scram\"")]
    found = findings(diagnose.connection_checks(healthy_connection(hba_rules=rules)))
    assert found[0]["result"] == 'pg_hba.conf line 20: invalid authentication method "scram"'


def test_connection_grants_name_each_privilege_and_object():
    missing = [{"kind": "table", "object": "alerts", "privilege": "INSERT", "owner": "claude_owner"},
               {"kind": "table", "object": "alerts", "privilege": "UPDATE", "owner": "claude_owner"},
               {"kind": "sequence", "object": "predictions_id_seq", "privilege": "USAGE", "owner": "claude_owner"},
               {"kind": "table", "object": "stray", "privilege": "SELECT", "owner": "postgres"},
               {"kind": "database", "object": "claude_daemon", "privilege": "CONNECT", "owner": None}]
    found = findings(diagnose.connection_checks(healthy_connection(grants_missing=missing)))
    results = [r["result"] for r in found]
    assert results == ["claude_app lacks CONNECT on database claude_daemon", "claude_app lacks USAGE on sequence "
                       "predictions_id_seq", "claude_app lacks INSERT, UPDATE on table alerts",
                       "claude_app lacks SELECT on table stray"]
    assert "permission denied" in found[0]["why"]
    assert "OWNER TO claude_owner" in found[3]["next"] and "OWNER TO" not in found[2]["next"]


def test_connection_database_missing():
    found = findings(diagnose.connection_checks(healthy_connection(db_exists=False, grants_missing=None)))
    assert found[0]["result"] == "database claude_daemon does not exist" and "backup-restore.md" in found[0]["next"]


def test_client_rows_of_an_app_host():
    good = diagnose.client_checks({"host": "app1", "tcp": {"address": "172.30.57.2", "port": "5432", "outcome": "ok"},
                                   "password_file": {"file": "same", "wired": True}})
    assert [(r["check"], r["ok"], r["result"]) for r in good] == [
        ("tcp", True, "reaches 172.30.57.2:5432 over TCP"),
        ("password file", True, "the daemon's password file holds the inventory's postgresql_app_password")]
    bad = diagnose.client_checks({"host": "app1",
                                  "tcp": {"address": "172.30.57.2", "port": "5432", "outcome": "TimeoutError: timed out"},
                                  "password_file": {"file": "differs", "wired": False}})
    assert [r["check"] for r in findings(bad)] == ["tcp", "password file"]
    assert "TimeoutError" in bad[0]["result"] and "firewall" in bad[0]["next"] and "fix_connection" in bad[0]["next"]
    assert "daemon_db_password" in bad[1]["next"]
    missing = diagnose.client_checks({"host": "app2", "tcp": {}, "password_file": {"file": "missing", "wired": True}})
    assert [r["result"] for r in missing] == ["the daemon's password file is missing"]
    assert "app.yml" in missing[0]["next"]
    assert diagnose.client_checks({"host": "app2", "password_file": {"file": "unknown"}}) == []


# --- case 2 rows ------------------------------------------------------------------
def test_schema_healthy():
    rows = diagnose.schema_checks({"host": "db", "db": "d", "migrate": {"pending": [], "current_version": 2},
                                   "copy": {"missing": [], "differs": []}, "missing": [], "tables_known": 5})
    assert findings(rows) == [] and [r["check"] for r in rows] == ["migrations", "files", "tables"]
    assert rows[0]["result"] == "schema version 2, nothing pending"


def test_schema_missing_table_says_empty_and_points_to_backups():
    missing = diagnose.schema_missing(FILES, ["users", "fallback_sync_log", "later"], pending=[])
    rows = diagnose.schema_checks({"host": "db", "db": "d", "migrate": {"pending": [], "current_version": 3},
                                   "copy": {}, "missing": missing})
    found = findings(rows)
    assert len(found) == 1 and found[0]["result"] == "table predictions (created by schema.sql) is missing"
    assert "EMPTY" in found[0]["next"] and "docs/runbooks/backup-restore.md" in found[0]["next"]
    assert "fix_schema" in found[0]["next"] and "0003_more.sql" in found[0]["next"]
    assert "rows are gone" in found[0]["why"]


def test_schema_pending_on_the_host_and_in_the_kit_is_one_finding():
    missing = diagnose.schema_missing(FILES, ["users", "predictions"], pending=[2, 3])
    rows = diagnose.schema_checks({"host": "db", "migrate": {"pending": [2], "applied": [
        {"version": 2, "name": "log", "file": "0002_log.sql"}]}, "copy": {"missing": ["0003_more.sql"], "differs": []},
        "missing": missing, "tables_known": 4})
    assert [r["result"] for r in findings(rows)] == [
        "pending: 0002_log.sql, 0003_more.sql (not on the host yet) (they create fallback_sync_log, later)"]
    assert rows[-1]["result"] == "all 4 tables the schema files create are present or pending"


def test_schema_edited_file_and_failed_check():
    rows = diagnose.schema_checks({"host": "db", "migrate": {"pending": [], "current_version": 2},
                                   "copy": {"differs": ["schema.sql"]}})
    assert "differ(s) from the copy" in findings(rows)[0]["result"]
    failed = diagnose.schema_checks({"host": "db", "migrate": {"failed": True, "msg": "schema.sql was changed"}})
    assert "schema.sql was changed" in findings(failed)[0]["result"]
    unknown = diagnose.schema_checks({"host": "db", "migrate": None})
    assert findings(unknown) == [] and unknown[0]["state"] == "NOT CHECKED"


# --- case 3 rows ------------------------------------------------------------------
NOW = "2026-03-01T10:00:00"


def inspect(status="running", restarting=False, restarts=0, code=0, oom=False, started="2026-03-01T09:00:00.123456789Z",
            health="healthy"):
    state = {"Status": status, "Restarting": restarting, "ExitCode": code, "OOMKilled": oom, "StartedAt": started}
    if health:
        state["Health"] = {"Status": health, "Log": [{"ExitCode": 1, "Output": "Traceback ...\nURLError: refused\n"}]}
    return [{"State": state, "RestartCount": restarts}]


def container(**changes):
    data = {"host": "app1", "name": "claude-daemon", "inspect": inspect(), "restart_count_later": 0,
            "stats": {"CPUPerc": "0.52%", "MemUsage": "41MiB / 1GiB", "MemPerc": "4.00%"}, "logs": [], "now": NOW}
    data.update(changes)
    return data


def test_container_healthy():
    rows = diagnose.container_checks(container())
    assert findings(rows) == []
    assert [r["check"] for r in rows] == ["state", "restarts", "health", "resources"]
    assert rows[0]["result"] == "claude-daemon is running, last started 60 min ago"
    assert rows[1]["result"] == "never restarted by Docker"
    assert rows[3]["result"] == "CPU 0.52%, memory 41MiB / 1GiB (4.00% of the limit)"


def test_container_bad_configuration_exit_2_is_one_finding_naming_the_variable():
    logs = ["2026-03-01T09:59:50.000Z ERROR claude_daemon invalid configuration: DB_PORT: expected an integer, got 'x'",
            "claude-daemon: invalid configuration: DB_PORT: expected an integer, got 'x'"]
    rows = diagnose.container_checks(container(
        inspect=inspect(status="restarting", restarting=True, restarts=7, code=2, started="2026-03-01T09:59:50Z",
                        health="unhealthy"), restart_count_later=8, logs=logs, stats={"MemUsage": "0B / 0B"}))
    assert len(rows) == 1 and not rows[0]["ok"]
    result = rows[0]["result"]
    assert result.startswith("claude-daemon is in a restart loop: restarting, restarted 8 times by Docker "
                             "(still growing while this ran), last started 10 s ago; last exit code 2: invalid configuration")
    assert result.endswith("(DB_PORT: expected an integer, got 'x')")
    assert "no fix tag" in rows[0]["next"] and "daemon_extra_env" in rows[0]["next"]
    assert "playbooks/app.yml" in rows[0]["next"] and "restart-loop.md" in rows[0]["next"]


def test_container_oom_killed_loop():
    rows = diagnose.container_checks(container(inspect=inspect(status="restarting", restarts=3, code=137, oom=True,
                                                               started="2026-03-01T09:58:00Z", health=None)))
    assert len(findings(rows)) == 1
    assert "OOMKilled" in rows[0]["result"] and "memory limit" in rows[0]["next"]


def test_container_recent_restart_while_running_is_a_loop_too():
    rows = diagnose.container_checks(container(inspect=inspect(restarts=4, code=1, started="2026-03-01T09:59:00Z")))
    assert [r["check"] for r in findings(rows)] == ["restarts"]
    assert "in a restart loop: running, restarted 4 times" in rows[0]["result"]
    assert "docker logs --tail 100 claude-daemon on app1" in rows[0]["next"]


def test_container_stopped_by_someone():
    rows = diagnose.container_checks(container(inspect=inspect(status="exited", code=143, health=None)))
    assert findings(rows)[0]["result"] == "claude-daemon is exited; last exit code 143: stopped with SIGTERM"
    assert "docker start claude-daemon" in findings(rows)[0]["next"]


def test_container_old_restarts_are_no_loop_but_unhealthy_is_a_finding():
    rows = diagnose.container_checks(container(inspect=inspect(restarts=2, code=1, health="unhealthy"),
                                               restart_count_later=2))
    found = findings(rows)
    assert [r["check"] for r in found] == ["health"]
    assert "URLError: refused" in found[0]["result"]
    assert [r["result"] for r in rows if r["check"] == "restarts"] == [
        "restarted 2 times by Docker, none in the last 15 min (the last exit: code 1, the daemon failed after start "
        "(e.g. it could not listen on its port): see the log lines)"]


def test_container_missing_or_engine_down():
    assert findings(diagnose.container_checks(container(inspect=None)))[0]["result"] == "there is no container claude-daemon"
    down = findings(diagnose.container_checks(container(error="Cannot connect to the Docker daemon")))[0]
    assert "Cannot connect" in down["result"]


@pytest.mark.parametrize("code,oom,words", [(0, False, "normally"), (1, False, "failed"), (2, False, "invalid configuration"),
                                            (137, True, "memory"), (137, False, "SIGKILL"), (143, False, "SIGTERM"),
                                            (139, False, "signal 11"), (3, False, "status 3"), (None, False, "no exit")])
def test_exit_code_meaning(code, oom, words):
    assert words in diagnose.exit_code_meaning(code, oom)


# --- collecting and printing --------------------------------------------------------
def test_collect_orders_rows_and_names_hosts_without_any():
    hostvars = {"db": {"diagnose_rows": diagnose.connection_checks(healthy_connection())},
                "app1": {"diagnose_rows": diagnose.container_checks(container())}, "app2": {}}
    rows = diagnose.diagnose_collect(hostvars, ["db", "app1", "app2"])
    assert rows[0]["case"] == "-" and rows[0]["host"] == "app2" and not rows[0]["ok"]
    assert [r["case"] for r in rows[1:]] == sorted((r["case"] for r in rows[1:]),
                                                   key=["connection failed", "schema not applied", "restart loop"].index)


def test_table_and_findings_text():
    rows = diagnose.container_checks(container(inspect=None)) + diagnose.connection_checks(healthy_connection())
    table = diagnose.diagnose_table(rows, ["restart loop"])
    assert [cell.strip() for cell in table[0].split(" | ")] == ["case", "check", "host", "state", "result"]
    assert "FINDING" in table[1] and len(table) == 2
    lines = diagnose.diagnose_findings(rows)
    assert lines[0] == "1 finding(s):"
    assert lines[1] == "1. [restart loop] app1: there is no container claude-daemon"
    assert lines[2].startswith("   why: ") and lines[3].startswith("   next: ")
    assert diagnose.diagnose_findings(diagnose.connection_checks(healthy_connection())) == ["No finding."]


def test_findings_after_a_repair_say_what_was_repaired():
    before = diagnose.connection_checks(healthy_connection(role=None, password=None))
    after = diagnose.connection_checks(healthy_connection())
    assert diagnose.diagnose_findings(after, before) == [
        "Repaired (1):", "  - [connection failed] db: role claude_app does not exist", "No finding."]


def test_host_facts_clients_and_log_pick():
    hostvars = {"app1": {"diagnose_tcp": {"outcome": "ok"}, "ansible_default_ipv4": {"address": "10.0.0.5"},
                         "ansible_fqdn": "app1.lab", "ansible_hostname": "app1"},
                "app2": {}}
    assert diagnose.diagnose_host_facts(hostvars, ["app1", "app2"], "diagnose_tcp") == {"app1": {"outcome": "ok"},
                                                                                          "app2": None}
    assert diagnose.diagnose_clients(hostvars, ["app1", "app2"]) == [
        {"host": "app1", "address": "10.0.0.5", "names": ["app1.lab", "app1", "app1"]}]
    logs = {"app2": ["x database mode=postgresql", "request /health"], "app1": ["a", "b PostgreSQL unavailable", "c"]}
    assert diagnose.diagnose_log_pick(logs, "database|connection|postgresql|sqlite", 20) == [
        "app1 | b PostgreSQL unavailable", "app2 | x database mode=postgresql"]
    assert diagnose.diagnose_log_pick(logs, None, 2) == ["app1 | b PostgreSQL unavailable", "app1 | c",
                                                         "app2 | x database mode=postgresql", "app2 | request /health"]


def test_render():
    assert diagnose.diagnose_render([], ["a"]) == ["(none)"]
    assert diagnose.diagnose_render([{"a": 1, "b": "x"}], ["a", "b"], ["a"]) == ["a | b", "1 | x"]
