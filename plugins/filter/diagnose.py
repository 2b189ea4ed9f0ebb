"""Filters of the troubleshooting runbook (playbooks/diagnose.yml).

Pure functions, no I/O; unit-tested in tests/unit/test_diagnose_filter.py.
The playbook gathers raw facts (query results, `docker inspect`, ...); these
filters decide what is wrong and say it in plain words.

    {{ verifier | scram_verify(password) }}          'match', 'mismatch', 'no password', 'not SCRAM: ...', 'malformed: ...'
    {{ userlist | pgbouncer_auth_state(user, verifier, exists) }}
                                                     PgBouncer's auth_file against pg_authid: 'match', 'mismatch', 'missing', 'no file'
    {{ rules | hba_decision(db, user, address) }}    which pg_hba line a TCP login meets, and whether that is good
    {{ 'localhost,10.0.0.5' | listens_on('10.0.0.5') }}   true, false, or none (cannot tell: a host name)
    {{ sql_text | schema_tables }}                   the tables a schema file creates
    {{ files | schema_missing(present, pending) }}   the tables the kit's files create that the database lacks
    {{ missing | schema_rerun }}                     the files to run again for them (fix_schema)
    {{ name | schema_version }}, {{ kit | schema_copy_differences(found, dir) }}, {{ lines | pg_clusters }},
    {{ code | exit_code_meaning(oom) }}              helpers of the above
    {{ facts | connection_checks }}                  rows of case 1 (connection failed), on the database host
    {{ facts | client_checks }}                      rows of case 1 on an app host (TCP, password file)
    {{ facts | schema_checks }}                      rows of case 2 (schema not applied)
    {{ facts | container_checks }}                   rows of case 3 (container restart loop)
    {{ hostvars | diagnose_collect(hosts) }}          every host's rows; a host without any is a row of its own
    {{ hostvars | diagnose_host_facts(hosts, key) }}  {host: its fact, or none}
    {{ hostvars | diagnose_clients(hosts) }}          the app hosts' addresses and names, for pg_hba
    {{ logs | diagnose_log_pick(pattern, 20) }}      the last matching lines of each host's log
    {{ rows | diagnose_table }}                      rows as text lines (case | check | host | state | result)
    {{ rows | diagnose_findings(before) }}           the summary: every finding with why and what next
    {{ dicts | diagnose_render(columns) }}           any list of dicts as a text table
    {{ lines | diagnose_text }}                      the lines as one text, printed as a block

A row is {case, check, host, ok, state, result, why, next}: `ok` false makes
it a finding; state is what the table shows (OK, FINDING, NOT CHECKED). Nothing here ever returns a password, a verifier or part of one.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import hmac
import ipaddress
import re
import stringprep
import unicodedata

from ansible_collections.claude_kit.stack.plugins.module_utils.kit_module import render_table

CONNECTION = "connection failed"
SCHEMA = "schema not applied"
CONTAINER = "restart loop"
CASES = (CONNECTION, SCHEMA, CONTAINER)
# The order of the rows in each case's table: from the server to the application.
CHECKS = ("diagnosed", "server", "listen", "tcp", "password file", "database", "role", "password", "pgbouncer",
          "pg_hba", "grants",
          "role, pg_hba, grants", "migrations", "migrations, tables", "files", "tables",
          "container", "state", "restarts", "health", "resources")

FIX_CONNECTION = "./kit run ansible-playbook playbooks/diagnose.yml --tags fix_connection"
FIX_SCHEMA = "./kit run ansible-playbook playbooks/diagnose.yml --tags fix_schema"
RESTORE_PAGE = "docs/runbooks/backup-restore.md"


# ---------------------------------------------------------------------------
# SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL stores it in pg_authid:
#   SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>   (base64 parts)
# ---------------------------------------------------------------------------
_SCRAM_RE = re.compile(r"SCRAM-SHA-256\$(\d+):([A-Za-z0-9+/]+={0,2})\$([A-Za-z0-9+/]+={0,2}):([A-Za-z0-9+/]+={0,2})")
_MD5_RE = re.compile(r"md5[0-9a-f]{32}")
# Far above any real setting (PostgreSQL's default is 4096); a bigger number is
# not a verifier PostgreSQL wrote, and would only keep the controller busy.
_MAX_ITERATIONS = 10_000_000

# RFC 4013 (SASLprep) section 2.3 and 2.5: what a prepared password must not contain.
_PROHIBITED = (
    stringprep.in_table_c12, stringprep.in_table_c21, stringprep.in_table_c22, stringprep.in_table_c3,
    stringprep.in_table_c4, stringprep.in_table_c5, stringprep.in_table_c6, stringprep.in_table_c7,
    stringprep.in_table_c8, stringprep.in_table_c9, stringprep.in_table_a1,
)


def saslprep(password):
    """The bytes PostgreSQL hashes for `password` (its pg_saslprep and the fallback around it).

    Pure ASCII is used as it is. Otherwise SASLprep: non-ASCII spaces become
    spaces, "commonly mapped to nothing" characters go, NFKC; if the result is
    empty, holds a prohibited or unassigned character or breaks the bidi rule,
    PostgreSQL uses the password's raw UTF-8 bytes instead, and so does this.
    """
    raw = password.encode("utf-8")
    if password.isascii():
        return raw
    mapped = "".join(" " if stringprep.in_table_c12(c) else c for c in password if not stringprep.in_table_b1(c))
    prepared = unicodedata.normalize("NFKC", mapped)
    if not prepared or any(table(c) for c in prepared for table in _PROHIBITED):
        return raw
    if any(stringprep.in_table_d1(c) for c in prepared):
        if any(stringprep.in_table_d2(c) for c in prepared):
            return raw
        if not (stringprep.in_table_d1(prepared[0]) and stringprep.in_table_d1(prepared[-1])):
            return raw
    return prepared.encode("utf-8")


def _b64(text):
    return base64.b64decode(text, validate=True)


def scram_verify(verifier, password):
    """Whether `password` is the one `verifier` (pg_authid.rolpassword) was made from.

    Returns 'match', 'mismatch', 'no password' (the role has none),
    'no password in the inventory', 'not SCRAM: ...' or 'malformed: ...'.
    Computes SaltedPassword = PBKDF2-HMAC-SHA-256(SASLprep(password), salt, i),
    then StoredKey = H(HMAC(SaltedPassword, "Client Key")) and
    ServerKey = HMAC(SaltedPassword, "Server Key"), and compares both in
    constant time. The answer never contains either input.
    """
    if verifier is None or verifier == "":
        return "no password"
    if not isinstance(verifier, str):
        return "malformed: the verifier is not text"
    if _MD5_RE.fullmatch(verifier):
        return "not SCRAM: the password is stored as an md5 hash"
    if not verifier.startswith("SCRAM-SHA-256$"):
        return "not SCRAM: unknown password format"
    match = _SCRAM_RE.fullmatch(verifier)
    if not match:
        return "malformed: not SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>"
    iterations = int(match.group(1))
    try:
        salt, stored_key, server_key = (_b64(match.group(n)) for n in (2, 3, 4))
    except (binascii.Error, ValueError):
        return "malformed: a part is not base64"
    if not 1 <= iterations <= _MAX_ITERATIONS or not salt or len(stored_key) != 32 or len(server_key) != 32:
        return "malformed: iteration count or key length out of range"
    if password is None or password == "":
        return "no password in the inventory"
    salted = hashlib.pbkdf2_hmac("sha256", saslprep(str(password)), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_ok = hmac.compare_digest(hashlib.sha256(client_key).digest(), stored_key)
    server_ok = hmac.compare_digest(hmac.new(salted, b"Server Key", hashlib.sha256).digest(), server_key)
    return "match" if stored_ok and server_ok else "mismatch"


# ---------------------------------------------------------------------------
# pg_hba.conf, as PostgreSQL reads it (the pg_hba_file_rules view): first match wins.
# ---------------------------------------------------------------------------
_METHOD_VERDICTS = {
    "scram-sha-256": None,
    "reject": "this line rejects the login",
    "trust": "trust: anyone on that address logs in as this role without any password",
    "password": "password: the password crosses the network in clear text",
    "md5": "md5: weaker than the kit allows (a password stored as an md5 hash is accepted with the md5 "
           "exchange on this line; the kit wants scram-sha-256 only)",
}


def _prefix_of_mask(netmask):
    """'255.255.255.0' -> 24, 'ffff:ffff::' -> 32; ValueError when the bits are not contiguous."""
    mask = ipaddress.ip_address(netmask)
    bits = mask.max_prefixlen
    value = int(mask)
    prefix = bin(value).count("1")
    if value != ((1 << bits) - 1) ^ ((1 << (bits - prefix)) - 1):
        raise ValueError(f"netmask {netmask} is not contiguous")
    return prefix


def _rule_network(address, netmask):
    """The network of an IP rule ('10.0.0.0/8', or address plus netmask), None for a host name."""
    try:
        if "/" in address:
            return ipaddress.ip_network(address, strict=False)
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if netmask:
        return ipaddress.ip_network(f"{ip}/{_prefix_of_mask(netmask)}", strict=False)
    return ipaddress.ip_network(ip)


def _as_list(value):
    if value is None:
        return []
    if isinstance(value, str):
        # A text array as PostgreSQL prints it ({a,b}), should a caller pass it so.
        return [v.strip('"') for v in value.strip("{}").split(",") if v]
    return list(value)


def _name_matches(entry, name):
    if entry.startswith("/"):  # PostgreSQL 16+: a regular expression
        try:
            return re.search(entry[1:], name) is not None
        except re.error:
            return False
    return entry == name


def _database_matches(entries, database, user, member_of):
    for entry in entries:
        if entry == "all":
            return True
        if entry == "replication":  # only physical replication connections
            continue
        if entry == "sameuser" and database == user:
            return True
        if entry in ("samerole", "samegroup") and database in member_of:
            return True
        if _name_matches(entry, database):
            return True
    return False


def _user_matches(entries, user, member_of):
    for entry in entries:
        if entry == "all":
            return True
        if entry.startswith("+"):  # members of that role (a role is a member of itself)
            if entry[1:] == user or entry[1:] in member_of:
                return True
        elif _name_matches(entry, user):
            return True
    return False


def _address_matches(rule, client, server_addresses, client_names):
    address = rule.get("address")
    if address in (None, "all"):
        return True
    if address == "samehost":
        return any(client == ipaddress.ip_interface(a).ip for a in server_addresses)
    if address == "samenet":
        return any(client in ipaddress.ip_interface(a).network for a in server_addresses)
    network = _rule_network(address, rule.get("netmask"))
    if network is None:  # a host name: PostgreSQL resolves the client's address (reverse, then forward)
        name = address.lower()
        names = [n.lower() for n in client_names]
        return any(n.endswith(name) for n in names) if name.startswith(".") else name in names
    return network.version == client.version and client in network


def _rule_text(rule):
    address = rule.get("address") or ""
    if rule.get("netmask"):
        try:
            address = f"{address}/{_prefix_of_mask(rule['netmask'])}"
        except ValueError:
            address = f"{address} {rule['netmask']}"
    parts = [rule.get("type") or "", ",".join(_as_list(rule.get("database"))), ",".join(_as_list(rule.get("user_name"))),
             address, rule.get("auth_method") or ""]
    return " ".join(p for p in parts if p)


def hba_decision(rules, database, user, address, ssl=False, member_of=(), server_addresses=(), client_names=()):
    """The pg_hba line a TCP login of `user` into `database` from `address` meets first.

    rules: rows of pg_hba_file_rules (line_number, type, database, user_name,
    address, netmask, auth_method, error), in line order. Lines with an error
    and `local` lines never match a TCP login; `hostssl` matches only when ssl
    is true, `hostnossl` only when it is false, `hostgssenc` never (the daemon
    does not use GSSAPI encryption). member_of: the roles `user` belongs to
    (for +role and samerole); server_addresses: the server's interfaces as
    'address/prefix' (for samehost and samenet); client_names: the client's
    host names (for host-name lines, which PostgreSQL matches through DNS).

    Returns {line, method, ok, text}: ok only for scram-sha-256.
    """
    try:
        client = ipaddress.ip_address(address)
    except ValueError:
        return {"line": None, "method": None, "ok": False, "text": f"{address!r} is not an IP address: cannot evaluate"}
    member_of = set(member_of or ())
    for rule in sorted(rules or [], key=lambda r: r.get("line_number") or 0):
        kind = rule.get("type")
        if rule.get("error") or kind in (None, "local", "hostgssenc"):
            continue
        if (kind == "hostssl" and not ssl) or (kind == "hostnossl" and ssl):
            continue
        if not _database_matches(_as_list(rule.get("database")), database, user, member_of):
            continue
        if not _user_matches(_as_list(rule.get("user_name")), user, member_of):
            continue
        try:
            if not _address_matches(rule, client, server_addresses or (), client_names or ()):
                continue
        except ValueError:
            continue
        method = rule.get("auth_method") or "?"
        line = rule.get("line_number")
        where = f"line {line}: {_rule_text(rule)}"
        if method in _METHOD_VERDICTS:
            problem = _METHOD_VERDICTS[method]
        else:
            problem = f"{method}: the daemon logs in with a password, which this method does not take"
        if problem is None:
            return {"line": line, "method": method, "ok": True, "text": f"{where} -> allowed with scram-sha-256"}
        return {"line": line, "method": method, "ok": False, "text": f"{where} -> {problem}"}
    return {"line": None, "method": None, "ok": False, "text": "no line matches -> rejected"}


def listens_on(listen_addresses, address):
    """Whether a server with this listen_addresses accepts TCP on `address`: True, False, or None (cannot tell)."""
    entries = [e.strip() for e in str(listen_addresses or "").split(",") if e.strip()]
    if "*" in entries:
        return True
    try:
        wanted = ipaddress.ip_address(address)
    except ValueError:
        return True if address in entries else None
    unsure = False
    for entry in entries:
        if entry == "localhost":
            if wanted.is_loopback:
                return True
            continue
        try:
            listen = ipaddress.ip_address(entry)
        except ValueError:
            unsure = True  # a host name: it resolves on the server
            continue
        if listen == wanted or (listen.version == wanted.version and listen.is_unspecified):
            return True
    return None if unsure else False


# ---------------------------------------------------------------------------
# Schema files
# ---------------------------------------------------------------------------
_SQL_NOISE = re.compile(r"--[^\n]*|/\*.*?\*/|'(?:[^']|'')*'|\$([A-Za-z_]*)\$.*?\$\1\$", re.S)
_IDENT = r'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'
_CREATE_TABLE = re.compile(
    r"\bCREATE\s+(?:(?:GLOBAL|LOCAL)\s+)?(TEMP|TEMPORARY|UNLOGGED)?\s*TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?"
    rf"({_IDENT}(?:\s*\.\s*{_IDENT})?)",
    re.I,
)
_ALTER_TABLE = re.compile(
    rf"\bALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?({_IDENT}(?:\s*\.\s*{_IDENT})?)", re.I
)
_MIGRATION_RE = re.compile(r"^(\d{4})_[A-Za-z0-9_-]+\.sql$")


def _unquote(name):
    parts = re.findall(_IDENT, name)
    names = [p[1:-1].replace('""', '"') if p.startswith('"') else p.lower() for p in parts]
    if len(names) == 2 and names[0] == "public":
        names = names[1:]
    return ".".join(names)


def _strip_sql(text):
    return _SQL_NOISE.sub(" ", text or "")


def schema_tables(text):
    """The tables a schema file creates (CREATE TABLE [IF NOT EXISTS] name), in file order.

    Comments, string literals and dollar-quoted bodies are ignored; temporary
    tables are not counted. Names are folded to lower case unless quoted; a
    table in `public` is named without its schema, any other as schema.name.
    """
    found = []
    for match in _CREATE_TABLE.finditer(_strip_sql(text)):
        if match.group(1) and match.group(1).upper() != "UNLOGGED":
            continue
        name = _unquote(match.group(2))
        if name not in found:
            found.append(name)
    return found


def schema_altered_tables(text):
    """The tables a schema file alters (ALTER TABLE name ...), lower-cased like schema_tables."""
    return sorted({_unquote(m.group(1)) for m in _ALTER_TABLE.finditer(_strip_sql(text))})


def schema_version(filename):
    """schema.sql -> 1, 0002_name.sql -> 2, anything else -> None (the migration module's naming)."""
    name = str(filename).rsplit("/", 1)[-1]
    if name == "schema.sql":
        return 1
    match = _MIGRATION_RE.match(name)
    return int(match.group(1)) if match else None


def schema_missing(files, present, pending=()):
    """Which tables the schema files create are not in the database, and how each comes back.

    files: {file name: text} (the kit's schema files); present: the
    database's tables (public ones without schema); pending: versions not
    applied yet. Returns [{table, file, version, pending, altered_by}] in
    version order: pending means the migration module creates it when it
    applies that version; otherwise re-running `file` does. altered_by lists
    later files that ALTER the table: re-running the creating file does not
    redo them.
    """
    present = {str(p) for p in present or ()}
    pending = {int(v) for v in pending or ()}
    ordered = sorted((files or {}).items(), key=lambda item: (schema_version(item[0]) or 10**6, item[0]))
    missing = []
    for position, (name, text) in enumerate(ordered):
        version = schema_version(name)
        for table in schema_tables(text):
            if table in present or any(m["table"] == table for m in missing):
                continue
            altered_by = [later for later, later_text in ordered[position + 1:] if table in schema_altered_tables(later_text)]
            missing.append({"table": table, "file": name, "version": version,
                            "pending": version in pending, "altered_by": altered_by})
    return missing


def schema_rerun(missing):
    """The files to run again for the missing tables that no pending migration creates, in version order."""
    files = []
    for entry in sorted(missing or [], key=lambda m: (m.get("version") or 10**6, m.get("file"))):
        if not entry.get("pending") and entry.get("file") not in files:
            files.append(entry["file"])
    return files


def schema_copy_differences(kit_files, host_files, remote_dir):
    """Files of the kit the database host lacks or holds with other content.

    kit_files: {file name: sha1 of its text}; host_files: the find module's
    `files` of the host's schema directory (path, checksum).
    """
    on_host = {f.get("path"): f.get("checksum") for f in host_files or []}
    missing, differs = [], []
    for name, digest in sorted((kit_files or {}).items()):
        path = f"{str(remote_dir).rstrip('/')}/{name}"
        if path not in on_host:
            missing.append(name)
        elif on_host[path] != digest:
            differs.append(name)
    extra = sorted(p.rsplit("/", 1)[-1] for p in on_host if p and p.rsplit("/", 1)[-1] not in (kit_files or {}))
    return {"missing": missing, "differs": differs, "extra": extra}


def pg_clusters(lines):
    """pg_lsclusters --no-header lines -> [{version, name, port, status, log}]."""
    clusters = []
    for line in lines or []:
        fields = line.split()
        if len(fields) < 4 or not fields[2].isdigit():
            continue
        clusters.append({"version": fields[0], "name": fields[1], "port": int(fields[2]), "status": fields[3],
                         "log": fields[6] if len(fields) > 6 else ""})
    return clusters


# ---------------------------------------------------------------------------
# Rows of the three cases
# ---------------------------------------------------------------------------
def _row(case, check, host, ok, result, why="", next_step="", state=None):
    """One line of a case's table; ok false makes it a finding. state: what the table
    shows (OK or FINDING, or e.g. NOT CHECKED for a check that could not run but is no finding)."""
    return {"case": case, "check": check, "host": host, "ok": bool(ok), "result": result,
            "state": state or ("OK" if ok else "FINDING"), "why": "" if ok else why, "next": "" if ok else next_step}


def _parse_time(text):
    """An ISO time (PostgreSQL's or Docker's, nanoseconds allowed) as an aware datetime, or None."""
    if not text or not isinstance(text, str) or text.startswith("0001-01-01"):
        return None
    value = text.strip().replace(" ", "T", 1)
    value = re.sub(r"(\.\d{6})\d+", r"\1", value)
    value = re.sub(r"Z$", "+00:00", value)
    value = re.sub(r"([+-]\d\d)$", r"\1:00", value)
    if value.lower() in ("infinity", "-infinity"):
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.timezone.utc)


def _ago(seconds):
    seconds = int(round(max(seconds, 0)))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} days"


def _connection_server_rows(data, host):
    rows = []
    service = data.get("service") or {}
    cluster = data.get("cluster")
    if not cluster:
        rows.append(_row(CONNECTION, "server", host, False, "no PostgreSQL cluster on this host (pg_lsclusters lists none)",
                         "nothing can connect: the server is not installed, or its cluster was removed",
                         "run the database tier (./kit run ansible-playbook playbooks/database.yml); "
                         f"if data was lost: {RESTORE_PAGE}"))
        return rows, False
    unit = data.get("service_name", "postgresql")
    state = f"{service.get('ActiveState', '?')} ({service.get('SubState', '?')})"
    if data.get("available"):
        rows.append(_row(CONNECTION, "server", host, True, f"{unit} is {state} and accepts connections"))
        return rows, True
    if service.get("ActiveState") != "active":
        rows.append(_row(CONNECTION, "server", host, False, f"{unit} is {state}, result {service.get('Result', '?')}",
                         "the server is not running: every client is refused (the daemons serve from their SQLite "
                         "fallback, and writes wait there)",
                         f"{FIX_CONNECTION} starts it (then re-applies the database tier); if it does not stay up, "
                         f"read its log: journalctl -u {unit}, {cluster.get('log') or '/var/log/postgresql/'}"))
        return rows, False
    rows.append(_row(CONNECTION, "server", host, False, f"{unit} is {state} but does not accept connections",
                     "it is starting, shutting down or recovering; clients are refused meanwhile",
                     f"wait a minute and run diagnose again; if it stays so, read {cluster.get('log') or 'its log'}"))
    return rows, False


def _targets(data):
    """The distinct (address, port) the app hosts connect to."""
    found = []
    for target in data.get("targets") or []:
        target = target or {}
        pair = (str(target.get("address")), str(target.get("port")))
        if target.get("address") and pair not in found:
            found.append(pair)
    return found


def _connection_listen_rows(data, host):
    settings = data.get("settings") or {}
    text = f"listen_addresses = '{settings.get('listen_addresses')}', port = {settings.get('port')}"
    problems, unsure = [], []
    for address, port in _targets(data):
        listening = listens_on(settings.get("listen_addresses"), address)
        if str(settings.get("port")) != port:
            problems.append(f"the daemons connect to port {port}")
        if listening is False:
            problems.append(f"{address} (where the daemons connect) is not among them")
        elif listening is None:
            unsure.append(address)
    if problems:
        return [_row(CONNECTION, "listen", host, False, f"{text}: {'; '.join(problems)}",
                     "connections to that address and port are refused before any password is asked",
                     f"{FIX_CONNECTION} re-applies postgresql_listen_addresses and postgresql_port (one restart); "
                     "if the inventory itself says otherwise, correct it first")]
    wanted = ", ".join(f"{a}:{p}" for a, p in _targets(data)) or "no app host to compare with"
    note = f" (a host name among them: the tcp rows decide for {', '.join(unsure)})" if unsure else ""
    return [_row(CONNECTION, "listen", host, True, f"{text}: covers {wanted}{note}")]


def _connection_role_rows(data, host, user, now):
    rows = []
    role = data.get("role")
    if role is None:
        rows.append(_row(CONNECTION, "role", host, False, f"role {user} does not exist",
                         "the daemons' logins fail (password authentication failed): they serve from SQLite",
                         f"{FIX_CONNECTION} re-creates it with the inventory's password, its grants and pg_hba lines"))
        return rows
    problems = []
    if not role.get("rolcanlogin"):
        problems.append("it cannot log in (NOLOGIN)")
    expires = _parse_time(role.get("rolvaliduntil"))
    if expires and now and expires <= now:
        problems.append(f"its password expired at {role.get('rolvaliduntil')} (VALID UNTIL)")
    if role.get("rolconnlimit") == 0:
        problems.append("its connection limit is 0")
    if problems:
        rows.append(_row(CONNECTION, "role", host, False, f"role {user} exists, but {', '.join(problems)}",
                         "every login of the daemons is refused",
                         f"{FIX_CONNECTION} resets it to LOGIN with the inventory's password"
                         + ("; clear VALID UNTIL or the connection limit by hand (ALTER ROLE), the kit does not set them"
                            if expires or role.get("rolconnlimit") == 0 else "")))
    else:
        rows.append(_row(CONNECTION, "role", host, True, f"role {user} exists and can log in"))
    password = data.get("password")
    if password == "match":
        rows.append(_row(CONNECTION, "password", host, True,
                         "the inventory's postgresql_app_password matches the role's SCRAM verifier"))
    elif password is not None:
        texts = {
            "mismatch": "the role's password is not the inventory's postgresql_app_password",
            "no password": "the role has no password at all",
            "no password in the inventory": "the inventory has no postgresql_app_password to compare with",
        }
        rows.append(_row(CONNECTION, "password", host, False, texts.get(password, f"the role's stored password: {password}"),
                         "the daemons log in with the inventory's password: PostgreSQL answers "
                         "'password authentication failed'",
                         f"{FIX_CONNECTION} sets the inventory's password again (stored as SCRAM)"))
    return rows


# PgBouncer's auth_file: one `"name" "secret"` per line, a double quote inside doubled.
_USERLIST_RE = re.compile(r'^\s*"((?:[^"]|"")*)"\s+"((?:[^"]|"")*)"')


def pgbouncer_auth_state(userlist, user, verifier, exists=True):
    """Whether PgBouncer's auth_file holds `user`'s current SCRAM verifier.

    Returns 'match', 'mismatch', 'missing' (no line for the user), 'no file',
    or None when PostgreSQL has no verifier to compare with (the password
    check names that). Never returns any part of either verifier.
    """
    if not exists:
        return "no file"
    if not verifier:
        return None
    for line in (userlist or "").splitlines():
        found = _USERLIST_RE.match(line)
        if found and found.group(1).replace('""', '"') == user:
            return "match" if found.group(2).replace('""', '"') == verifier else "mismatch"
    return "missing"


def _connection_pgbouncer_rows(data, host, user):
    state = data.get("pgbouncer")
    if state is None:
        return []
    if state == "match":
        return [_row(CONNECTION, "pgbouncer", host, True, f"PgBouncer's auth_file holds {user}'s current SCRAM verifier")]
    texts = {
        "mismatch": f"PgBouncer's auth_file holds another SCRAM verifier for {user} than PostgreSQL",
        "missing": f"PgBouncer's auth_file has no line for {user}",
        "no file": "PgBouncer's auth_file does not exist",
    }
    why = ("PgBouncer logs in to PostgreSQL with keys made from the verifier it holds, which only fit the same salt: "
           "its new server connections are refused (password authentication failed) and the daemons serve from SQLite"
           if state == "mismatch" else
           "PgBouncer refuses the daemons' logins (SASL authentication failed): they serve from SQLite")
    return [_row(CONNECTION, "pgbouncer", host, False, texts.get(state, f"PgBouncer's auth_file: {state}"), why,
                 f"{FIX_CONNECTION} writes it again from PostgreSQL's verifier and reloads PgBouncer (no client dropped)")]


def _connection_hba_rows(data, host, database, user):
    rows = []
    for rule in data.get("hba_rules") or []:
        if rule.get("error"):
            rows.append(_row(CONNECTION, "pg_hba", host, False, f"pg_hba.conf line {rule.get('line_number')}: {rule['error']}",
                             "a pg_hba.conf with an error is not loaded: a reload keeps the previous rules, a restart fails",
                             f"{FIX_CONNECTION} renders pg_hba.conf again from the inventory"))
    settings = data.get("settings") or {}
    for client in data.get("clients") or []:
        decision = hba_decision(data.get("hba_rules") or [], database, user, client.get("address"),
                                ssl=bool(data.get("ssl")), member_of=data.get("member_of") or (),
                                server_addresses=data.get("server_addresses") or (), client_names=client.get("names") or ())
        label = f"{client.get('host')} ({client.get('address')})"
        if decision["ok"]:
            rows.append(_row(CONNECTION, "pg_hba", client.get("host"), True, f"{label}: {decision['text']}"))
            continue
        if decision["line"] is None:
            why = "PostgreSQL answers 'no pg_hba.conf entry for host': the daemons on this host cannot log in"
        elif decision["method"] in ("trust", "password", "md5"):
            why = "logins work, but weaker than the kit allows"
        else:
            why = "the daemons on this host cannot log in"
        rows.append(_row(CONNECTION, "pg_hba", client.get("host"), False, f"{label}: {decision['text']}", why,
                         f"{FIX_CONNECTION} renders pg_hba.conf again: the app hosts' addresses with scram-sha-256, "
                         "nothing else but postgresql_hba_extra_entries (check those in the inventory)"))
    if settings and not data.get("clients"):
        rows.append(_row(CONNECTION, "pg_hba", host, True, "no app host in the inventory: no client to evaluate"))
    return rows


def _connection_grant_rows(data, host, database, user):
    missing = data.get("grants_missing")
    if missing is None:
        why = f"role {user} does not exist" if data.get("role") is None else f"database {database} does not exist"
        return [_row(CONNECTION, "grants", host, True, f"not checked: {why} (the repair grants them with it)",
                     state="NOT CHECKED")]
    if not missing:
        counts = data.get("grants_counted") or {}
        return [_row(CONNECTION, "grants", host, True,
                     f"{user} has CONNECT on {database}, USAGE on schema public, SELECT/INSERT/UPDATE/DELETE on "
                     f"{counts.get('tables', '?')} tables and USAGE on {counts.get('sequences', '?')} sequences")]
    by_object = {}
    for entry in missing:
        key = (entry.get("kind"), entry.get("object"), entry.get("owner"))
        by_object.setdefault(key, []).append(entry.get("privilege"))
    rows = []
    owner_role = data.get("owner")
    for (kind, name, owner), privileges in sorted(by_object.items(), key=lambda item: tuple(map(str, item[0]))):
        next_step = f"{FIX_CONNECTION} grants the kit's privileges again (the database tier's privileges step)"
        if kind in ("table", "sequence") and owner_role and owner and owner != owner_role:
            next_step = (f"the kit grants only on what {owner_role} owns, and {owner} owns this {kind}: "
                         f"ALTER TABLE {name} OWNER TO {owner_role} (as postgres), then {next_step}")
        rows.append(_row(CONNECTION, "grants", host, False,
                         f"{user} lacks {', '.join(privileges)} on {kind} {name}",
                         "the daemon's statements on it fail with 'permission denied'", next_step))
    return rows


def client_checks(data):
    """Rows of case 1 that an app host finds itself: does it reach PostgreSQL over TCP, and
    does the daemon's password file hold the inventory's postgresql_app_password.

    data: host, tcp ({address, port, outcome: 'ok' or the error}), password_file
    ({file: same, differs, missing or unknown, wired: whether the inventory's
    daemon_db_password is its postgresql_app_password}).
    """
    host = data.get("host")
    rows = []
    test = data.get("tcp") or {}
    target, outcome = f"{test.get('address', '?')}:{test.get('port', '?')}", test.get("outcome")
    if outcome == "ok":
        rows.append(_row(CONNECTION, "tcp", host, True, f"reaches {target} over TCP"))
    elif outcome is not None:
        rows.append(_row(CONNECTION, "tcp", host, False, f"cannot reach {target}: {outcome}",
                         "the daemon on this host cannot open a connection at all (it serves from SQLite)",
                         f"if the server row says it is not running: {FIX_CONNECTION}; if the listen row is a "
                         "finding, that one; if both are OK: the network or a firewall between this host and the "
                         "database host, or daemon_db_host/daemon_db_port in the inventory"))
    state = data.get("password_file") or {}
    if state.get("file") == "same":
        rows.append(_row(CONNECTION, "password file", host, True,
                         "the daemon's password file holds the inventory's postgresql_app_password"))
    elif state.get("file") in ("differs", "missing"):
        if not state.get("wired"):
            next_step = ("the inventory's daemon_db_password differs from postgresql_app_password: wire it to "
                         "postgresql_app_password, then ./kit run ansible-playbook playbooks/app.yml")
        else:
            next_step = "./kit run ansible-playbook playbooks/app.yml writes the file again and restarts the daemon"
        rows.append(_row(CONNECTION, "password file", host, False,
                         "the daemon's password file is missing" if state["file"] == "missing"
                         else "the daemon's password file is not the inventory's postgresql_app_password",
                         "the daemon logs in with what the file holds: 'password authentication failed'", next_step))
    return rows


def connection_checks(data):
    """Rows of case 1 that the database host tells (the app hosts' own: client_checks).

    data: host, db, user, owner, service_name, service (systemctl show:
    ActiveState, SubState, Result), cluster (version, name, log; none when
    pg_lsclusters lists none), available (the server answers), settings
    (listen_addresses, port), db_exists, role (pg_roles row or none),
    password (scram_verify's answer or none), pgbouncer (pgbouncer_auth_state's
    answer, or none without PgBouncer), hba_rules, ssl, member_of,
    server_addresses, clients ([{host, address, names}]), grants_missing
    ([{kind, object, privilege, owner}] or none), grants_counted, targets
    ([{address, port}]: where the app hosts' daemons connect), now (the
    server's time).
    """
    host, database, user = data.get("host"), data.get("db"), data.get("user")
    rows, up = _connection_server_rows(data, host)
    if up:
        rows += _connection_listen_rows(data, host)
    else:
        rows.append(_row(CONNECTION, "role, pg_hba, grants", host, True, "not checked: the server does not answer",
                         state="NOT CHECKED"))
        return rows
    if data.get("db_exists") is False:
        rows.append(_row(CONNECTION, "database", host, False, f"database {database} does not exist",
                         "the daemons cannot connect to it, and every table and row in it is gone",
                         f"{FIX_CONNECTION} creates it with the schema, EMPTY: restore the rows from a backup ({RESTORE_PAGE})"))
    rows += _connection_role_rows(data, host, user, _parse_time(data.get("now")))
    rows += _connection_pgbouncer_rows(data, host, user)
    rows += _connection_hba_rows(data, host, database, user)
    rows += _connection_grant_rows(data, host, database, user)
    return rows


def schema_checks(data):
    """Rows of case 2.

    data: host, db, migrate (pg_schema_migrate's check-mode result on the
    host's copy of the files: pending, applied, current_version, failed, msg;
    none when it did not run), copy (schema_copy_differences: the kit's files
    against the host's copy), missing (schema_missing), tables_known (how
    many tables the kit's files create).
    """
    host = data.get("host")
    rows = []
    migrate = data.get("migrate")
    if migrate is None:
        rows.append(_row(SCHEMA, "migrations, tables", host, True,
                         "not checked: the server does not answer, or the database does not exist (case 1)",
                         state="NOT CHECKED"))
        return rows
    copy = data.get("copy") or {}
    missing = data.get("missing") or []
    if migrate.get("failed"):
        rows.append(_row(SCHEMA, "migrations", host, False, f"the migration check failed: {migrate.get('msg', '?')}",
                         "the files and the database disagree about the schema: the next deploy stops there too",
                         "read the message: an applied file that was edited must be restored and its change written "
                         f"as a new numbered migration; a missing directory is copied by {FIX_SCHEMA}"))
        pending_versions = set()
    else:
        pending_versions = set(migrate.get("pending") or [])
    # Pending: what the module reports on the host's copy, and the kit's files the copy lacks
    # (a version the database recorded without its file would have failed the check above).
    pending = [(a.get("version"), a.get("file") or str(a.get("version"))) for a in migrate.get("applied") or []
               if a.get("version") in pending_versions]
    pending += [(schema_version(name), f"{name} (not on the host yet)") for name in copy.get("missing") or []]
    pending.sort(key=lambda item: (item[0] or 10**6, item[1]))
    if pending:
        creates = [m["table"] for m in missing if m.get("pending")]
        rows.append(_row(SCHEMA, "migrations", host, False,
                         "pending: " + ", ".join(name for _v, name in pending)
                         + (f" (they create {', '.join(creates)})" if creates else ""),
                         "what they create or change is not in the database: the daemon's statements on it fail",
                         f"{FIX_SCHEMA} copies the kit's files and applies them, each in its own transaction, as the "
                         "owner role"))
    elif not migrate.get("failed"):
        rows.append(_row(SCHEMA, "migrations", host, True,
                         f"schema version {migrate.get('current_version', '?')}, nothing pending"))
    edited = [name for name in copy.get("differs") or [] if schema_version(name) not in pending_versions]
    if edited:
        rows.append(_row(SCHEMA, "files", host, False,
                         f"the kit's {', '.join(edited)} differ(s) from the copy the database tier applied",
                         "an applied schema file was edited: the next deploy refuses to migrate (checksum differs)",
                         "put the applied file back as it was and write the change as a new numbered migration"))
    else:
        rows.append(_row(SCHEMA, "files", host, True, "the host's copy of the schema files is the kit's"
                         if not pending else "the files the host holds are the kit's"))
    lost = [m for m in missing if not m.get("pending")]
    for entry in lost:
        later = (f". {', '.join(entry['altered_by'])} changed it later and is not re-run: redo that change by hand"
                 if entry.get("altered_by") else "")
        rows.append(_row(SCHEMA, "tables", host, False, f"table {entry['table']} (created by {entry.get('file')}) is missing",
                         f"queries on it fail with 'relation \"{entry['table']}\" does not exist', and its rows are gone",
                         f"{FIX_SCHEMA} re-creates it from {entry.get('file')}, EMPTY: the rows do not come back "
                         f"with it; restore them from a backup ({RESTORE_PAGE}){later}"))
    if not lost:
        rows.append(_row(SCHEMA, "tables", host, True,
                         f"all {data.get('tables_known', '?')} tables the schema files create are present"
                         + (" or pending" if any(m.get("pending") for m in missing) else "")))
    return rows


_EXIT_CODES = {
    0: "exited normally (stopped, or finished)",
    1: "the daemon failed after start (e.g. it could not listen on its port): see the log lines",
    2: "invalid configuration: the daemon checks every variable at start and exits 2; the log names the variable",
    137: "killed with SIGKILL (docker kill, or a stop that timed out)",
    143: "stopped with SIGTERM",
}


def exit_code_meaning(code, oom_killed=False):
    """Plain words for a container's exit code."""
    if code is None:
        return "no exit code"
    code = int(code)
    if oom_killed:
        return "killed by the kernel for memory (OOMKilled): it reached its memory limit"
    if code in _EXIT_CODES:
        return _EXIT_CODES[code]
    if code > 128:
        return f"killed by signal {code - 128}"
    return f"the daemon exited with status {code}: see the log lines"


def _inspect_object(inspect):
    if isinstance(inspect, list):
        return inspect[0] if inspect else None
    return inspect or None


def _container_next(name, host, code, oom):
    """What a person does next for a container that keeps exiting (there is no fix tag: the cause needs one)."""
    logs = f"docker logs --tail 100 {name} on {host}"
    then = "then ./kit run ansible-playbook playbooks/app.yml creates the container again from the inventory"
    if oom:
        cause = (f"it outgrows its memory limit: find what grows ({logs}, docker stats); the kit sets no limit, so "
                 f"someone did: docker rm -f {name} on the host removes the container with its limit")
    elif code == 2:
        cause = ("correct the variable the log line names (daemon_* variables or daemon_extra_env in the inventory, "
                 "or the image's defaults)")
    else:
        cause = f"read why it exits: {logs}"
    return f"no fix tag, the cause needs a person: {cause}; {then} (docs/runbooks/restart-loop.md)"


def container_checks(data):
    """Rows of case 3 from `docker inspect`, `docker stats` and the log lines of one app host.

    data: host, name, inspect (docker inspect's JSON: a list or its first
    object; none when there is no such container), error (docker's message
    when inspect failed for another reason), restart_count_later (RestartCount
    of a second inspect a little later), stats (docker stats --format json),
    logs (last lines), now (ISO time), recent_seconds (a start younger than
    this, after restarts, counts as a loop; default 900).
    """
    host, name = data.get("host"), data.get("name")
    if data.get("error"):
        return [_row(CONTAINER, "container", host, False, f"docker cannot answer: {data['error']}",
                     "without the engine no daemon runs on this host",
                     "systemctl status docker on the host; ./kit run ansible-playbook playbooks/app.yml starts it")]
    inspect = _inspect_object(data.get("inspect"))
    if not inspect:
        return [_row(CONTAINER, "container", host, False, f"there is no container {name}",
                     "no daemon runs on this host: Nginx sends every request to the others",
                     "./kit run ansible-playbook playbooks/app.yml creates it")]
    state = inspect.get("State") or {}
    rows = []
    now = _parse_time(data.get("now"))
    started = _parse_time(state.get("StartedAt"))
    age = (now - started).total_seconds() if now and started else None
    since = f", last started {_ago(age)} ago" if age is not None else ""
    restarts = int(inspect.get("RestartCount") or 0)
    later = data.get("restart_count_later")
    growing = later is not None and int(later) > restarts
    restarts = max(restarts, int(later or 0))
    code, oom = state.get("ExitCode"), bool(state.get("OOMKilled"))
    status = state.get("Status", "?")
    running = status == "running" and not state.get("Restarting")
    cause = exit_code_meaning(code, oom)
    config_lines = [line for line in data.get("logs") or [] if "invalid configuration:" in line]
    if code == 2 and config_lines:
        cause += f" ({config_lines[-1].split('invalid configuration:', 1)[-1].strip()})"
    next_step = _container_next(name, host, code, oom)
    recent = age is not None and age < float(data.get("recent_seconds") or 900)
    looping = restarts > 0 and (growing or recent or state.get("Restarting") or status == "restarting")
    if looping:
        rows.append(_row(CONTAINER, "restarts", host, False,
                         f"{name} is in a restart loop: {status}, restarted {restarts} times by Docker"
                         f"{' (still growing while this ran)' if growing else ''}{since}; last exit code {code}: {cause}",
                         "it keeps exiting and Docker keeps starting it again, waiting longer each time: this host "
                         "serves nothing meanwhile, Nginx sends its requests to the others", next_step))
    elif not running:
        rows.append(_row(CONTAINER, "state", host, False, f"{name} is {status}; last exit code {code}: {cause}",
                         "this host serves nothing: Nginx sends its requests to the others",
                         next_step if code not in (0, 143) else
                         "someone stopped it: docker start " + name + " on the host, or ./kit run ansible-playbook "
                         "playbooks/app.yml"))
    else:
        rows.append(_row(CONTAINER, "state", host, True, f"{name} is running{since}"))
        rows.append(_row(CONTAINER, "restarts", host, True, "never restarted by Docker" if not restarts else
                         f"restarted {restarts} times by Docker, none in the last {_ago(float(data.get('recent_seconds') or 900))}"
                         + (f" (the last exit: code {code}, {cause})" if code else "")))
    health = (state.get("Health") or {}).get("Status")
    if running and health == "unhealthy":
        log = ((state.get("Health") or {}).get("Log") or [{}])[-1]
        output = (log.get("Output") or "").strip().splitlines()
        rows.append(_row(CONTAINER, "health", host, False,
                         f"the health check fails (exit {log.get('ExitCode')}: {output[-1][:120] if output else 'no output'})",
                         "/health does not answer 200: Nginx skips this instance",
                         f"docker logs --tail 100 {name} on {host}; if /health says the database is unavailable, "
                         "see case 1; docs/runbooks/instance-down.md"))
    elif running and health:
        rows.append(_row(CONTAINER, "health", host, True, f"health check: {health}"))
    stats = data.get("stats") or {}
    if running and stats:
        rows.append(_row(CONTAINER, "resources", host, True,
                         f"CPU {stats.get('CPUPerc', '?')}, memory {stats.get('MemUsage', '?')} "
                         f"({stats.get('MemPerc', '?')} of the limit)"))
    return rows


# ---------------------------------------------------------------------------
# Collecting and printing
# ---------------------------------------------------------------------------
def diagnose_collect(hostvars, hosts, key="diagnose_rows"):
    """Every host's rows (each host keeps its own list); a host without them is a finding."""
    rows = []
    for host in hosts or []:
        found = (hostvars.get(host) or {}).get(key) if hasattr(hostvars, "get") else None
        if isinstance(found, list):
            rows.extend(found)
        else:
            rows.append(_row("-", "diagnosed", host, False, "this host was not diagnosed: unreachable, or a task failed",
                             "nothing is known about it", "see the error printed for this host above"))
    cases = {case: n for n, case in enumerate(CASES)}
    checks = {check: n for n, check in enumerate(CHECKS)}

    def order(row):
        check = checks.get(row["check"], len(CHECKS))
        # Case 3 host by host (each container's story together); the others check by check.
        if row["case"] == CONTAINER:
            return (cases[CONTAINER], str(row["host"]), check)
        return (cases.get(row["case"], -1), check, str(row["host"]))

    return sorted(rows, key=order)


def diagnose_host_facts(hostvars, hosts, key):
    """{host: hostvars[host][key], or None where the host has no such fact (unreachable, not run)}."""
    found = {}
    for host in hosts or []:
        facts = hostvars.get(host) if hasattr(hostvars, "get") else None
        found[host] = facts.get(key) if hasattr(facts, "get") else None
    return found


def diagnose_clients(hostvars, hosts):
    """The app hosts as PostgreSQL sees them: [{host, address, names}] from their facts
    (default IPv4 address; FQDN, short name and inventory name for host-name pg_hba lines)."""
    clients = []
    for host in hosts or []:
        facts = hostvars.get(host) if hasattr(hostvars, "get") else None
        facts = facts if hasattr(facts, "get") else {}
        address = (facts.get("ansible_default_ipv4") or {}).get("address")
        if not address:
            continue
        names = [n for n in (facts.get("ansible_fqdn"), facts.get("ansible_hostname"), host) if n]
        clients.append({"host": host, "address": address, "names": names})
    return clients


def diagnose_log_pick(logs_by_host, pattern=None, last=20, ignorecase=True):
    """The last `last` lines of each host's log (those matching `pattern`, a regular
    expression, when given) as 'host | line', hosts in order; a host without a log is left out."""
    regex = re.compile(pattern, re.I if ignorecase else 0) if pattern else None
    picked = []
    for host in sorted(logs_by_host or {}):
        lines = [line for line in logs_by_host[host] or [] if regex is None or regex.search(line)]
        picked += [f"{host} | {line}" for line in lines[-int(last):]] if int(last) > 0 else []
    return picked


def diagnose_table(rows, cases=None):
    """Rows as text lines: case | check | host | state | result (state OK or FINDING)."""
    selected = [r for r in rows or [] if cases is None or r["case"] in cases]
    shown = [dict(r, state=r.get("state") or ("OK" if r["ok"] else "FINDING")) for r in selected]
    return render_table(("case", "check", "host", "state", "result"), shown)


def _key(row):
    return (row["case"], row["check"], row["host"], row["result"])


def diagnose_findings(rows, before=None):
    """The summary: each finding with why it matters and what to do next; with `before`
    (the rows of the first look, when a fix ran), also what the repair cleared."""
    findings = [r for r in rows or [] if not r["ok"]]
    lines = []
    if before is not None:
        now = {_key(r) for r in findings}
        repaired = [r for r in before if not r["ok"] and _key(r) not in now]
        if repaired:
            lines.append(f"Repaired ({len(repaired)}):")
            lines += [f"  - [{r['case']}] {r['host']}: {r['result']}" for r in repaired]
    if not findings:
        lines.append("No finding.")
        return lines
    lines.append(f"{len(findings)} finding(s):")
    for n, row in enumerate(findings, 1):
        lines.append(f"{n}. [{row['case']}] {row['host']}: {row['result']}")
        if row["why"]:
            lines.append(f"   why: {row['why']}")
        if row["next"]:
            lines.append(f"   next: {row['next']}")
    return lines


def diagnose_render(rows, columns, right_aligned=()):
    """Any list of dicts as a text table (render_table of module_utils/kit_module.py)."""
    if not rows:
        return ["(none)"]
    return render_table(tuple(columns), rows, right_aligned=tuple(right_aligned))


def diagnose_text(lines):
    """Lines as one text (newline-separated), which the YAML callback prints as a block."""
    return "\n".join(str(line) for line in lines or [])


class FilterModule:
    """Troubleshooting runbook filters."""

    def filters(self):
        return {
            "scram_verify": scram_verify,
            "pgbouncer_auth_state": pgbouncer_auth_state,
            "hba_decision": hba_decision,
            "listens_on": listens_on,
            "schema_tables": schema_tables,
            "schema_version": schema_version,
            "schema_missing": schema_missing,
            "schema_rerun": schema_rerun,
            "schema_copy_differences": schema_copy_differences,
            "pg_clusters": pg_clusters,
            "connection_checks": connection_checks,
            "client_checks": client_checks,
            "schema_checks": schema_checks,
            "container_checks": container_checks,
            "exit_code_meaning": exit_code_meaning,
            "diagnose_collect": diagnose_collect,
            "diagnose_host_facts": diagnose_host_facts,
            "diagnose_clients": diagnose_clients,
            "diagnose_log_pick": diagnose_log_pick,
            "diagnose_table": diagnose_table,
            "diagnose_findings": diagnose_findings,
            "diagnose_render": diagnose_render,
            "diagnose_text": diagnose_text,
        }
