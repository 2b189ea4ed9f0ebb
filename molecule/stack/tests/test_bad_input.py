"""Bad input is refused before anything changes (playbooks/preflight.yml, docs/preflight.md).

A table of wrong inventories, each given to `ansible-playbook site.yml` on the
converged stack as extra variables (or as one more inventory file layered on
the scenario's). Every one must fail in the preflight (no play after its two
ran), name the variable (and the host where one host is at fault), leave
PLAY RECAP at changed=0 on every host, and change no file on any host: every
host's configuration is fingerprinted (content, mode and owner of every file
under /etc and /usr/local, the kit's state, postgresql.auto.conf, the package
database, the Docker images) before the table and after it.

The runs are independent and fail early, so they run side by side
(KIT_BAD_INPUT_PARALLEL at a time, 4 by default).
"""

import concurrent.futures
import datetime
import json
import os
import pathlib
import re
import shutil
import subprocess
import tempfile
import time

import pytest
import testinfra
import testinfra.utils.ansible_runner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
PROJECT = pathlib.Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
SITE = str(PROJECT / "site.yml")
CREDENTIALS = pathlib.Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "credentials"
RUNNER = testinfra.utils.ansible_runner.AnsibleRunner(INVENTORY)

HOSTS = RUNNER.get_hosts("all")
DATA = RUNNER.get_hosts("database")[0]
APPS = RUNNER.get_hosts("app")
APP = APPS[0]
PARALLEL = int(os.environ.get("KIT_BAD_INPUT_PARALLEL", "4"))
# The only plays a refused run may reach: the preflight's (playbooks/secrets.yml, playbooks/preflight.yml).
PREFLIGHT_PLAYS = {"Secrets exist and are long enough", "Reach every host before any change",
                   "Check every host's variables before any change"}
RECAP_RE = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)
PLAY_RE = re.compile(r"^PLAY \[(.*)\] \*+$", re.M)

# What a host's configuration is: every file under these roots (content, mode,
# owner), minus the state that running services rewrite on their own.
FINGERPRINT = r"""
import glob, hashlib, json, os, stat, subprocess
roots = ["/etc", "/usr/local", "/var/lib/claude-kit/schema", "/var/lib/claude-kit/postgresql", "/var/lib/dpkg/status"]
roots += glob.glob("/var/lib/postgresql/*/main/postgresql.auto.conf")
found = {}
def note(path):
    try:
        st = os.lstat(path)
    except OSError:
        return
    entry = [stat.filemode(st.st_mode), st.st_uid, st.st_gid]
    if stat.S_ISREG(st.st_mode):
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 16), b""):
                digest.update(block)
        entry += [digest.hexdigest(), int(st.st_mtime)]
    elif stat.S_ISLNK(st.st_mode):
        entry.append(os.readlink(path))
    found[path] = entry
for root in roots:
    note(root)
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            note(os.path.join(top, name))
try:
    images = subprocess.run(["docker", "image", "ls", "-q", "--no-trunc"], capture_output=True, text=True, timeout=30)
    found["docker images"] = sorted(images.stdout.split())
except (OSError, subprocess.SubprocessError):
    pass
print(json.dumps(found, sort_keys=True))
"""


def fingerprints():
    """{host: {path: [mode, uid, gid, sha256, mtime]}} of every host, read side by side."""
    def one(name):
        host = testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}")
        return name, json.loads(host.check_output("python3 -c %s", FINGERPRINT))
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(HOSTS)) as pool:
        return dict(pool.map(one, HOSTS))


def make_pki(directory):
    """Certificates for the own-PKI cases, each wrong in one way only: a self-signed certificate
    with its key, a second unrelated key, a file that is no certificate, and a CA (ca.crt) that
    signed one certificate for the wrong names and one that has expired; plus one from another CA."""
    def key():
        return ec.generate_private_key(ec.SECP256R1())

    def pem_key(private_key):
        return private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption())

    def write(name, cert, private_key):
        pathlib.Path(directory, f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        pathlib.Path(directory, f"{name}.key").write_bytes(pem_key(private_key))

    def certificate(common_name, subject_key, issuer=None, names=(), days=(-1, 30), ca=False):
        now = datetime.datetime.now(datetime.timezone.utc)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        issuer_name, issuer_key = issuer or (subject, subject_key)
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name)
                   .public_key(subject_key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now + datetime.timedelta(days=days[0]))
                   .not_valid_after(now + datetime.timedelta(days=days[1]))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                                            critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    host_key = key()
    write("host", certificate("bad-input-test", host_key), host_key)
    pathlib.Path(directory, "other.key").write_bytes(pem_key(key()))
    pathlib.Path(directory, "garbage.crt").write_text("this is not a certificate\n")
    ca_key, other_ca_key = key(), key()
    ca_cert = certificate("bad-input-test CA", ca_key, days=(-1, 365), ca=True)
    write("ca", ca_cert, ca_key)
    other_ca = certificate("another CA", other_ca_key, days=(-1, 365), ca=True)
    for name, issuer, days in (("wrongname", (ca_cert.subject, ca_key), (-1, 30)),
                               ("expired", (ca_cert.subject, ca_key), (-30, -1)),
                               ("otherca", (other_ca.subject, other_ca_key), (-1, 30))):
        leaf_key = key()
        write(name, certificate(name, leaf_key, issuer=issuer, names=["not-this-host.invalid"], days=days), leaf_key)


def own_pki(directory, cert="host.crt", key="host.key", ca="host.crt"):
    return {"tls_ca_cert_src": f"{directory}/{ca}", "tls_cert_src": f"{directory}/{cert}",
            "tls_key_src": f"{directory}/{key}"}


def hba(**entry):
    return {"postgresql_hba_extra_entries": [{"database": "all", "user": "all", **entry}]}


# (case, extra variables, extra inventory (YAML text) or None, what the output must name)
# {pki} in a value is replaced by the directory of make_pki's files.
CASES = [
    # Types and choices (the roles' argument specs, run by the preflight).
    ("int is not a number", {"postgresql_max_connections": "many"}, None, ["postgresql_max_connections", DATA]),
    ("dict given a list", {"daemon_extra_env": ["USAGE_INTERVAL=5"]}, None, ["daemon_extra_env", APP]),
    ("unknown eviction policy", {"redis_maxmemory_policy": "lru"}, None, ["redis_maxmemory_policy", DATA]),
    ("unknown environment", {"kit_environment": "staging"}, None, ["kit_environment"]),
    ("md5 is refused", hba(type="hostssl", address="10.0.0.0/8", method="md5"), None,
     ["postgresql_hba_extra_entries", "md5"]),
    # Ports.
    ("port 70000", {"kit_db_port": 70000}, None, ["kit_db_port=70000 is not a TCP port", DATA]),
    ("port 0", {"monitoring_node_exporter_port": 0}, None, ["monitoring_node_exporter_port=0 is not a TCP port"]),
    ("two services on one port", {"nginx_status_port": 6379}, None,
     ["nginx_status_port and redis_port are both port 6379", DATA]),
    ("the daemon on the exporter's port", {"daemon_published_port": 9100}, None,
     ["daemon_published_port and monitoring_node_exporter_port are both port 9100", APP]),
    # Sizes.
    ("negative memory", {"redis_maxmemory": "-1gb"}, None, ["redis_maxmemory=-1gb must be more than 0", DATA]),
    ("memory that does not parse", {"postgresql_tuning_overrides": {"shared_buffers": "lots"}}, None,
     ["postgresql_tuning_overrides.shared_buffers=lots is not a PostgreSQL memory size", DATA]),
    # Addresses.
    ("bad CIDR", {"postgresql_app_client_addresses": ["10.0.0.300/32"]}, None,
     ["postgresql_app_client_addresses[0]=10.0.0.300/32 is not a CIDR", DATA]),
    ("bad CIDR in pg_hba", hba(type="hostssl", address="10.0.0.0/33", method="scram-sha-256"), None,
     ["postgresql_hba_extra_entries[0]", "10.0.0.0/33", DATA]),
    ("trust without acknowledgement", hba(type="local", method="trust"), None,
     ["postgresql_hba_extra_entries[0]", "postgresql_hba_trust_acknowledged", DATA]),
    ("local line with a password method", hba(type="local", method="scram-sha-256"), None,
     ["postgresql_hba_extra_entries[0]", "is a local line with method scram-sha-256", DATA]),
    ("bad firewall source", {"firewall_extra_sources": {"postgresql": ["10.0.0.0/33"]}}, None,
     ["firewall_extra_sources", DATA]),
    # Connections: the daemons must not be able to exhaust PostgreSQL (role pgbouncer's validate.yml).
    ("daemons could exhaust PostgreSQL without PgBouncer", {"kit_pgbouncer_enabled": False, "daemon_db_pool_max": 60},
     None, ["kit_pgbouncer_enabled false",
            f"{len(APPS)} app hosts x daemon_db_pool_max (60 each) = {60 * len(APPS)} > postgresql_max_connections 100",
            "kit_db_reserved_connections 10 = 87", DATA]),
    ("PgBouncer's pool above PostgreSQL's limit", {"pgbouncer_default_pool_size": 200}, None,
     ["pgbouncer_default_pool_size 200 + pgbouncer_reserve_pool_size 0 = 200", "= 87", DATA]),
    # The groups the tiers point at.
    ("unknown host in a group", {}, "app:\n  hosts:\n    stack-app9:\n      ansible_connection: community.docker.docker\n",
     ["stack-app9 (groups: app) did not answer", "No such container"]),
    ("database host misspelt", {"daemon_db_host": "stack-dta"}, None, ["daemon_db_host=stack-dta", APP]),
    ("backups of a host outside `database`", {"backup_db_host": APP}, None, [f"backup_db_host={APP}", DATA]),
    # Certificates given by the user (role tls).
    ("certificate file missing", own_pki("{pki}", cert="missing.crt"), None, ["tls_cert_src", "is not a file"]),
    ("certificate that does not parse", own_pki("{pki}", cert="garbage.crt"), None,
     ["tls_cert_src", "not a PEM certificate"]),
    ("certificate and key do not match", own_pki("{pki}", key="other.key"), None,
     ["tls_cert_src", "tls_key_src", "does not belong"]),
    ("certificate expired", own_pki("{pki}", cert="expired.crt", key="expired.key", ca="ca.crt"), None,
     ["tls_cert_src=", "/expired.crt is not valid now", DATA]),
    ("certificate from another CA", own_pki("{pki}", cert="otherca.crt", key="otherca.key", ca="ca.crt"), None,
     ["/otherca.crt does not verify against", "tls_ca_cert_src=", DATA]),
    ("certificate for other names", own_pki("{pki}", cert="wrongname.crt", key="wrongname.key", ca="ca.crt"), None,
     ["/wrongname.crt does not cover", "not-this-host.invalid", DATA]),
    # An app host's own certificate must carry the daemons' shared name (Nginx's proxy_ssl_name).
    ("own certificate without the daemons' name",
     {**own_pki("{pki}", cert="wrongname.crt", key="wrongname.key", ca="ca.crt"), "kit_daemon_tls_name": "daemons.stack.test"},
     None, ["does not cover", "DNS:daemons.stack.test", "kit_daemon_tls_name daemons.stack.test", APP]),
    ("daemons' TLS name that is not a DNS name", {"kit_daemon_tls_name": "daemons_*.test"}, None,
     ["kit_daemon_tls_name=daemons_*.test is not a DNS name"]),
    # Production's secrets.
    ("empty password in production", {"kit_environment": "production", "redis_admin_password": ""}, None,
     ["redis_admin_password is empty"]),
    ("placeholder in production", {"kit_environment": "production", "postgresql_app_password": "changeme-changeme-1",
                                   "daemon_db_password": "changeme-changeme-1"}, None,
     ["postgresql_app_password looks like a placeholder", DATA]),
    ("lab-generated secret in production", {"kit_environment": "production", "kit_lab_credentials_dirs": [str(CREDENTIALS)]},
     None, ["postgresql_app_password is a secret the lab generated", DATA]),
]


def expand(value, pki):
    if isinstance(value, str):
        return value.replace("{pki}", pki)
    if isinstance(value, list):
        return [expand(v, pki) for v in value]
    if isinstance(value, dict):
        return {k: expand(v, pki) for k, v in value.items()}
    return value


def run_case(workdir, index, extra_vars, extra_inventory):
    args = ["ansible-playbook", "-i", INVENTORY]
    if extra_inventory:
        layer = pathlib.Path(workdir, f"inventory-{index}.yml")
        layer.write_text(extra_inventory)
        args += ["-i", str(layer)]
    if extra_vars:
        values = pathlib.Path(workdir, f"vars-{index}.json")
        values.write_text(json.dumps(extra_vars))
        args += ["-e", f"@{values}"]
    started = time.monotonic()
    # Facts in memory: side-by-side runs must not share a fact cache's files.
    proc = subprocess.run([*args, SITE], capture_output=True, text=True, timeout=900, check=False,
                          env=dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", ANSIBLE_CACHE_PLUGIN="memory"))
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - started


@pytest.fixture(scope="module")
def table():
    """Every case run once, side by side, between two fingerprints of every host."""
    workdir = tempfile.mkdtemp(prefix="kit-bad-input-")
    try:
        make_pki(workdir)
        before = fingerprints()
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(max_workers=PARALLEL) as pool:
            futures = {case[0]: pool.submit(run_case, workdir, index, expand(case[1], workdir), case[2])
                       for index, case in enumerate(CASES)}
            results = {name: future.result() for name, future in futures.items()}
        elapsed = time.monotonic() - started
        after = fingerprints()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nbad-input table: {len(CASES)} runs, {PARALLEL} at a time, {elapsed:.0f} s "
          f"(longest run {max(r[2] for r in results.values()):.0f} s)")
    return results, before, after


def test_the_table_is_big_enough():
    assert len(CASES) >= 20 and len({case[0] for case in CASES}) == len(CASES)


@pytest.mark.parametrize("name,needles", [(case[0], case[3]) for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_is_refused_in_the_preflight_naming_the_variable(table, name, needles):
    results, _before, _after = table
    rc, output, _seconds = results[name]
    tail = output[-4000:]
    assert rc != 0, tail
    # Only the preflight's plays ran: the run stopped before the first play that changes a host.
    assert set(PLAY_RE.findall(output)) <= PREFLIGHT_PLAYS, PLAY_RE.findall(output)
    for needle in needles:
        assert needle in output, f"{needle!r} not named: {tail}"
    # Every host that ran reports no change (a run refused on the controller, by
    # playbooks/secrets.yml, never reaches the hosts: they are not in its recap).
    recap = {m.group(1): int(m.group(3)) for m in RECAP_RE.finditer(output)}
    assert recap and all(changed == 0 for changed in recap.values()), recap
    assert set(HOSTS) <= set(recap) or set(recap) == {"localhost"}, recap
    # No secret of the scenario appears in any message.
    for secret_file in CREDENTIALS.iterdir():
        if secret_file.is_file():
            assert secret_file.read_text().split()[0] not in output, f"{secret_file.name}'s value is in the output"
    assert "changeme-changeme-1" not in output


def test_no_file_changed_on_any_host(table):
    _results, before, after = table
    assert set(before) == set(HOSTS)
    for host in HOSTS:
        changed = sorted(path for path in set(before[host]) | set(after[host])
                         if before[host].get(path) != after[host].get(path))
        assert not changed, f"{host}: {changed[:20]}"
