"""Redis's security baseline on the cache host (stack-data), as a client, an attacker and an
operator meet it: TLS only (plain text refused, the certificate verified by name), bound to
named addresses, protected mode, the password-less user off, the application user denied
every @admin and @dangerous command, passwords stored only as SHA-256 hashes, no DEBUG or
MODULE LOAD, private data files, and the daemons connected over TLS.

Clients run where clients are: redis-cli on the cache host (local tools reach Redis with TLS
on 127.0.0.1 or its own address), and Python's ssl on an app host (the firewall lets only the
app hosts reach Redis's port). Each test that writes something removes it before it ends.
"""

import functools
import hashlib
import json
import os
import re
import shlex

import pytest
import testinfra.utils.ansible_runner

from test_stack import APPS, DATA, INVENTORY, healths

testinfra_hosts = ["stack-data"]
VARS = testinfra.utils.ansible_runner.AnsibleRunner(INVENTORY).get_variables("stack-data")
CREDENTIALS = os.path.join(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", ""), "credentials")
PORT = int(VARS.get("redis_port", VARS.get("kit_redis_port", 6379)))
CA = VARS.get("kit_tls_ca_file", "/etc/claude-kit/tls/ca.crt")
APP_USER = VARS.get("kit_redis_app_user", "claude_app")
ADMIN_USER = VARS.get("redis_admin_user", "kit_admin")
MONITOR_USER = VARS.get("kit_monitor_user", "claude_monitor")
ACL_FILE = "/etc/redis/users.acl"
REDIS_CONF = "/etc/redis/redis.conf"
DATA_DIR = "/var/lib/redis"


def secret(name):
    """A password molecule.yml's lookups generated (the file holds the password alone)."""
    with open(os.path.join(CREDENTIALS, name), encoding="utf-8") as handle:
        return handle.read().split(" salt=")[0].strip()


PASSWORDS = {APP_USER: "redis_app_password", ADMIN_USER: "redis_admin_password", MONITOR_USER: "redis_monitor_password"}


@functools.cache
def ip(host):
    return host.interface("eth0").addresses[0]


def cli(user, *command, host="127.0.0.1", tls=True, json_output=False):
    """redis-cli on the cache host as `user` (its password in REDISCLI_AUTH; None: no AUTH at
    all): stdout and stderr together, stripped. With TLS the server is verified against the CA."""
    args = ["redis-cli", "-h", host, "-p", str(PORT), "--no-auth-warning"]
    if tls:
        args += ["--tls", "--cacert", CA]
    if json_output:
        args.append("--json")
    if user is not None:
        args += ["--user", user]
    env = f"REDISCLI_AUTH={shlex.quote(secret(PASSWORDS[user]))} " if user is not None else ""
    result = DATA.run(env + " ".join(shlex.quote(str(a)) for a in args + list(command)))
    return (result.stdout + result.stderr).strip()


def admin(*command):
    return cli(ADMIN_USER, *command)


def admin_json(*command):
    return json.loads(cli(ADMIN_USER, *command, json_output=True))


def config_get(name):
    return admin_json("CONFIG", "GET", name)[name]


# Runs on an app host: one TLS handshake with Redis's port per case, reporting the outcome.
PROBE = r"""
import json, socket, ssl, sys
host, port, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3]

def attempt(context, server_hostname):
    try:
        with socket.create_connection((host, port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname=server_hostname) as tls:
                tls.sendall(b"PING\r\n")
                return {"ok": True, "version": tls.version(), "reply": tls.recv(64).decode(errors="replace")}
    except ssl.SSLCertVerificationError as exc:
        return {"ok": False, "verify": exc.verify_message}
    except (ssl.SSLError, OSError) as exc:
        return {"ok": False, "error": str(exc)}

def pinned(version):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=ca)
    context.minimum_version = context.maximum_version = version
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # the refusal must be the server's, not this client's
    return context

def plain():
    try:
        with socket.create_connection((host, port), timeout=5) as sock:
            sock.sendall(b"PING\r\n")
            return {"reply": sock.recv(64).decode(errors="replace")}
    except OSError as exc:
        return {"error": str(exc)}

print(json.dumps({
    "verified": attempt(ssl.create_default_context(cafile=ca), host),
    "wrong_name": attempt(ssl.create_default_context(cafile=ca), "wrong.example"),
    "system_store": attempt(ssl.create_default_context(), host),
    "tls1_1": attempt(pinned(ssl.TLSVersion.TLSv1_1), host),
    "tls1_2": attempt(pinned(ssl.TLSVersion.TLSv1_2), host),
    "tls1_3": attempt(pinned(ssl.TLSVersion.TLSv1_3), host),
    "plain": plain(),
}))
"""


@functools.cache
def probe():
    """PROBE's report, run once on stack-app1 against the cache host's address."""
    return json.loads(APPS[0].check_output("python3 -c %s %s %s %s", PROBE, ip(DATA), str(PORT), CA))


# --- listeners --------------------------------------------------------------------------


def listening(port):
    """Local addresses with a TCP socket listening on `port` (from /proc/net/tcp and tcp6)."""
    addresses = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in DATA.file(table).content_string.splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:
                raw = bytes.fromhex(address)
                words = [raw[i:i + 4][::-1] for i in range(0, len(raw), 4)]  # each 32-bit word is little-endian
                packed = b"".join(words)
                addresses.add(".".join(map(str, packed)) if len(packed) == 4 else packed.hex())
    return addresses


def test_redis_listens_only_with_tls_on_named_addresses(host):
    assert config_get("port") == "0", "a plain-text port is open"
    assert config_get("tls-port") == str(PORT)
    bind = config_get("bind").split()
    assert bind and not {"0.0.0.0", "*", "::", "-::*"} & set(bind), bind
    assert listening(PORT) == set(bind) == {"127.0.0.1", ip(DATA)}
    assert config_get("protected-mode") == "yes"


def test_a_plain_text_client_gets_no_answer(host):
    for address in ("127.0.0.1", ip(DATA)):
        out = cli(APP_USER, "PING", host=address, tls=False)
        assert "PONG" not in out and re.search(r"I/O error|Connection reset|closed", out), out
    assert "PONG" not in probe()["plain"].get("reply", ""), probe()["plain"]


def test_a_verified_tls_client_gets_pong(host):
    assert cli(APP_USER, "PING", host=ip(DATA)) == "PONG"
    assert cli(APP_USER, "PING") == "PONG"  # 127.0.0.1: local tools, the certificate names it too
    verified = probe()["verified"]
    # Not logged in yet: Redis answers, and refuses (the default user is off).
    assert verified["ok"] and verified["reply"].startswith("-NOAUTH"), verified


def test_a_client_verifying_another_name_or_without_the_kits_ca_is_refused(host):
    report = probe()
    assert not report["wrong_name"]["ok"] and "wrong.example" in report["wrong_name"].get("verify", ""), report
    assert not report["system_store"]["ok"] and "certificate" in report["system_store"].get("verify", ""), report


def test_only_tls_1_2_and_1_3_are_accepted(host):
    report = probe()
    assert report["tls1_2"]["ok"] and report["tls1_2"]["version"] == "TLSv1.2", report["tls1_2"]
    assert report["tls1_3"]["ok"] and report["tls1_3"]["version"] == "TLSv1.3", report["tls1_3"]
    assert not report["tls1_1"]["ok"] and re.search(r"(?i)protocol.version|alert", report["tls1_1"]["error"]), report
    assert config_get("tls-auth-clients") == "no"  # clients log in with their ACL user's password


# --- users and commands -------------------------------------------------------------------


def test_the_password_less_default_user_is_off(host):
    assert cli(None, "PING").startswith("NOAUTH")
    for password in ("", "anything"):
        result = DATA.run("REDISCLI_AUTH=%s redis-cli -h 127.0.0.1 -p %s --tls --cacert %s --user default "
                          "--no-auth-warning PING", password, str(PORT), CA)
        assert "PONG" not in result.stdout and re.search("WRONGPASS|NOAUTH", result.stdout + result.stderr), result
    assert "off" in admin_json("ACL", "GETUSER", "default")["flags"]
    assert config_get("requirepass") == ""


@pytest.mark.parametrize("command", [
    ["CONFIG", "GET", "maxmemory"], ["FLUSHALL"], ["KEYS", "*"], ["INFO"], ["ACL", "LIST"], ["DEBUG", "SLEEP", "0"],
    ["CLIENT", "LIST"], ["MONITOR"], ["SCAN", "0"], ["SET", "other:key", "1"],
])
def test_the_app_user_is_refused_admin_and_dangerous_commands(host, command):
    out = cli(APP_USER, *command)
    if command[0] == "DEBUG":  # refused before the ACL is asked (enable-debug-command no); the ACL refuses it too
        assert "not allowed" in out or out.startswith("NOPERM"), out
        assert "no permissions" in admin("ACL", "DRYRUN", APP_USER, *command)
    else:
        assert out.startswith("NOPERM"), out


def test_no_admin_or_dangerous_command_is_granted_to_the_app_user(host):
    """The whole categories, as this Redis defines them, against what the user is granted."""
    user = admin_json("ACL", "GETUSER", APP_USER)
    rules = user["commands"].split()
    assert rules[0] == "-@all", rules  # everything denied, then a list of single commands
    granted = {rule[1:] for rule in rules[1:] if rule.startswith("+")}
    assert granted and not [rule for rule in rules[1:] if rule.startswith("+@")], rules
    forbidden = set(admin_json("ACL", "CAT", "admin")) | set(admin_json("ACL", "CAT", "dangerous"))
    assert not granted & forbidden, granted & forbidden
    assert user["keys"] == "~claude:*" and user["channels"] == ""
    # And what the daemon needs still works, on its own keys.
    key = "claude:security-test"
    assert cli(APP_USER, "SET", key, "1", "EX", "60") == "OK"
    assert cli(APP_USER, "DEL", key) == "1"


def test_debug_and_module_loading_are_off_even_for_the_admin(host):
    assert config_get("enable-debug-command") == "no" and config_get("enable-module-command") == "no"
    assert "DEBUG command not allowed" in admin("DEBUG", "SLEEP", "0")
    assert "MODULE command not allowed" in admin("MODULE", "LOAD", "/usr/lib/redis/none.so")
    assert config_get("enable-protected-configs") == "no"


def test_passwords_are_stored_only_as_sha256_hashes(host):
    acl = DATA.file(ACL_FILE).content_string
    conf = DATA.file(REDIS_CONF).content_string
    lines = {line.split()[1]: line.split() for line in acl.splitlines() if line.startswith("user ")}
    for user, name in PASSWORDS.items():
        password = secret(name)
        assert password not in acl and password not in conf, f"{name} in plain text"
        digest = hashlib.sha256(password.encode()).hexdigest()
        assert f"#{digest}" in lines[user], f"{user}'s line has no #<sha256> of its password"
    for user, words in lines.items():
        assert not [w for w in words if w.startswith(">") or w.startswith("<")], f"{user}: a plain password rule"
        hashes = [w for w in words if w.startswith("#")]
        assert all(re.fullmatch(r"#[0-9a-f]{64}", h) for h in hashes), words
        assert hashes or "off" in words, f"{user} is on without a password hash"
    assert not re.search(r"(?m)^\s*(requirepass|masterauth)\s", conf)
    for path in (ACL_FILE, REDIS_CONF):
        file = DATA.file(path)
        assert (file.user, file.group, file.mode) == ("root", "redis", 0o640), path


def test_the_data_directory_and_its_files_are_private(host):
    directory = DATA.file(DATA_DIR)
    assert (directory.user, directory.group, directory.mode) == ("redis", "redis", 0o750)
    pid = DATA.check_output("systemctl show -p MainPID --value redis-server.service")
    assert re.search(r"(?m)^Umask:\s+0027$", DATA.file(f"/proc/{pid}/status").content_string)
    # A snapshot written now is 0640 (the kit's cache keeps nothing on disk: removed again).
    dump = f"{DATA_DIR}/{config_get('dbfilename')}"
    existed = DATA.file(dump).exists
    try:
        assert admin("SAVE") == "OK"
        snapshot = DATA.file(dump)
        assert (snapshot.user, snapshot.group, snapshot.mode) == ("redis", "redis", 0o640)
    finally:
        if not existed:
            DATA.run("rm -f %s", dump)
    assert DATA.check_output(r"find %s -mindepth 1 \( -type f ! -perm 0640 -o -type d ! -perm 0750 \) -print",
                             DATA_DIR) == ""
    assert DATA.check_output("find %s ! -user redis -print", DATA_DIR) == ""


def test_the_redis_user_reads_the_key_through_its_group(host):
    key = DATA.file(VARS.get("kit_tls_key_file", "/etc/claude-kit/tls/server.key"))
    group = VARS.get("kit_tls_key_group", "ssl-cert")
    assert (key.user, key.group, key.mode) == ("root", group, 0o640)
    assert group in DATA.user("redis").groups


# --- the daemons ---------------------------------------------------------------------------


def test_the_daemons_are_configured_for_tls_with_the_kits_ca(host):
    for app in APPS:
        env = app.check_output("docker inspect --format '{{json .Config.Env}}' %s",
                               VARS.get("kit_daemon_container_name", "claude-daemon"))
        variables = dict(item.split("=", 1) for item in json.loads(env))
        assert variables["REDIS_URL"] == f"rediss://{APP_USER}@{ip(DATA)}:{PORT}/0"
        ca_file = variables["REDIS_CA_FILE"]
        assert app.check_output("docker exec %s cat %s", VARS.get("kit_daemon_container_name", "claude-daemon"),
                                ca_file) == app.file(CA).content_string.strip()


def test_the_daemons_connections_are_tls(host):
    """/health says Redis is ok on every instance; Redis's only listener is TLS (port 0), and
    its client list shows the daemons' connections, as the app user, from the app hosts."""
    for status, _headers, body in healths():
        assert status == 200 and body["redis"] == "ok", body
    clients = [dict(field.split("=", 1) for field in line.split()) for line in admin("CLIENT", "LIST").splitlines()]
    daemons = [c for c in clients if c.get("user") == APP_USER]
    assert daemons, clients
    assert {c["laddr"] for c in daemons} == {f"{ip(DATA)}:{PORT}"}
    assert {c["addr"].rsplit(":", 1)[0] for c in daemons} <= {ip(app) for app in APPS}
    assert config_get("port") == "0"
