"""No secret leaks: not from a run of site.yml, not into anything a host exposes (issue 11).

Runs after test_rotate_secrets.py (file order), so it sees the rotated stack.
The run it scans is conftest.py's `production_site_run`: `site.yml -vvv --diff`
through the production inventory (over SSH as `deploy`, sudo, Vault secrets;
test_zz_production_path.py checks that side of it), made to handle secrets for
real: with tls_force_renew every host gets a new key, and the app hosts'
password files are removed first so that the run writes them again. The
secrets are read after that run (new keys included):

  - every password file of the scenario's credentials folder, and the values
    test_rotate_secrets.py retired (retired-secrets/ beside it; a .previous
    file if a rotation stopped half-way): old values must not leak either;
  - the private part of every key below it (tls/ the kit CA's and the
    hosts', pki/ pgBackRest's): the base64 lines of the PEM body, less any
    line that is public data (an EC key's last line is its public point,
    which certificates and logs may show).

Where they must not appear: the run's output (-vvv shows every command
Ansible runs; --diff every changed file), and on every host the files others
can read (mode o+r under directories others can enter) below /etc, /var/lib/
claude*, /var/lib/postgresql, /var/lib/redis, /opt, /srv, /run, /usr/local,
/home, /tmp, /var/tmp, the log files under /var/log whatever their mode, the
command line of every process, the journal (every field: sudo records the
commands it runs, _CMDLINE the logging process's), `docker inspect` and
`docker logs` of every container on the app hosts, pg_stat_statements (the
monitoring role may read it) and `docker inspect` of the scenario's own
containers from the controller.

The scan runs in each host as a Python program sent on stdin (docker exec -i),
the secrets inside it: never on a command line, never in a file. Every
failure names the secret and where it was found, never its value. A control
proves the scan is not blind: it must find each secret in the root-only file
that legitimately holds it.
"""

import base64
import concurrent.futures
import functools
import json
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization

from helpers import report
from production import APP_HOSTS, CREDENTIALS, EPHEMERAL, HOSTS, KIT, RECAP_RE, RUNNER, container

RETIRED = EPHEMERAL / "retired-secrets"
DATABASE_HOSTS = set(RUNNER.get_hosts("database"))
testinfra_hosts = ["stack-data"]

# Files others can read, below these (globs); larger files are not read.
READABLE_ROOTS = ["/etc", "/var/lib/claude*", "/var/lib/postgresql", "/var/lib/redis", "/opt", "/srv", "/run",
                  "/usr/local", "/home", "/tmp", "/var/tmp"]
MAX_FILE = 64 * 1024 * 1024
# Root-only files that hold a secret by design: the scan must find it there (its control).
CONTROLS = {
    "app": {f"{KIT.get('daemon_config_dir', '/etc/claude-daemon')}/db_password": "postgresql_app_password",
            f"{KIT.get('daemon_config_dir', '/etc/claude-daemon')}/redis_password": "redis_app_password"},
    # The Redis health check's password, while there is a monitoring tier.
    "cache": ({"/etc/claude-kit/monitoring/secrets/redis.pass": "redis_monitor_password"}
              if RUNNER.get_hosts("monitoring") else {}),
    "backup": {"/etc/claude-kit/backup.pgpass": "postgresql_backup_password"},
}

# Runs in each host (python3 -, this text on stdin). PAYLOAD: base64 JSON with
# the secrets as [label, value] and what to scan. Prints a JSON report of
# labels and places, never a value.
SCANNER = r"""
import base64, glob, json, os, re, stat, subprocess
P = json.loads(base64.b64decode("@PAYLOAD@"))
SECRETS = [(label, value.encode()) for label, value in P["secrets"]]
LABELS = {}
for label, value in SECRETS:
    LABELS.setdefault(value, []).append(label)
PATTERN = re.compile(b"|".join(re.escape(v) for v in sorted(LABELS, key=len, reverse=True)))
report = {"found": {}, "controls": {}, "errors": [], "files": 0}

def hits(data):
    return sorted({label for match in PATTERN.findall(data) for label in LABELS[match]})

def scan(category, where, data):
    found = hits(data)
    if found:
        report["found"].setdefault(category, {})[where] = found

def run(argv):
    proc = subprocess.run(argv, capture_output=True, timeout=600)
    if proc.returncode != 0:
        error = proc.stderr[-300:].decode(errors="replace")
        report["errors"].append(f"{' '.join(argv[:3])}: exit {proc.returncode}: {error}")
    return proc.stdout

def others_enter(path):
    # Every directory from / down to path lets others through (x for others).
    parts = os.path.abspath(path).split(os.sep)
    for i in range(1, len(parts)):
        d = os.sep.join(parts[:i]) or os.sep
        try:
            if not os.stat(d).st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
    return True

def read(path):
    with open(path, "rb") as handle:
        return handle.read()

# 1. Files others can read.
seen = set()
for pattern in P["readable_roots"]:
    for root in glob.glob(pattern):
        if not others_enter(root) or not os.stat(root).st_mode & stat.S_IXOTH:
            continue
        for top, dirs, files in os.walk(root):
            # Others cannot go below a directory without x for them: nothing there is readable to them.
            dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(top, d))
                       and os.lstat(os.path.join(top, d)).st_mode & stat.S_IXOTH]
            for name in files:
                path = os.path.join(top, name)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                readable = stat.S_ISREG(st.st_mode) and st.st_mode & stat.S_IROTH
                if path in seen or not readable or st.st_size > P["max_file"]:
                    continue
                seen.add(path)
                try:
                    data = read(path)
                except OSError:
                    continue
                report["files"] += 1
                scan("a file others can read", path, data)

# 2. Log files, whatever their mode (the journal's own files are read through journalctl).
for top, dirs, files in os.walk("/var/log"):
    dirs[:] = [d for d in dirs if os.path.join(top, d) != "/var/log/journal"]
    for name in files:
        path = os.path.join(top, name)
        if os.path.isfile(path) and not os.path.islink(path) and os.path.getsize(path) <= P["max_file"]:
            try:
                scan("a log file", path, read(path))
            except OSError:
                pass

# 3. Every process's command line.
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        cmdline = read(f"/proc/{pid}/cmdline")
        comm = read(f"/proc/{pid}/comm").decode(errors="replace").strip()
    except OSError:
        continue
    scan("a command line", f"pid {pid} ({comm})", cmdline)

# 4. The journal, every field of every entry.
scan("the journal", "journalctl -o export", run(["journalctl", "--no-pager", "-o", "export"]))

# 5. The containers of the host's Docker engine.
if P["docker"]:
    ids = run(["docker", "ps", "-aq"]).split()
    for cid in ids:
        cid = cid.decode()
        scan("docker inspect", f"container {cid}", run(["docker", "inspect", cid]))
        logs = subprocess.run(["docker", "logs", cid], capture_output=True, timeout=300)
        scan("docker logs", f"container {cid}", logs.stdout + logs.stderr)

# 6. pg_stat_statements (readable by pg_read_all_stats, which the monitoring role has).
if P["database"]:
    db = P["database"]
    has = run(["runuser", "-u", "postgres", "--", "psql", "-XAtq", "-d", db, "-c",
               "SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'"]).strip()
    if has == b"1":
        scan("pg_stat_statements", db, run(["runuser", "-u", "postgres", "--", "psql", "-XAtq", "-d", db, "-c",
                                            "SELECT query FROM pg_stat_statements"]))

# The controls: root-only files that must hold their secret.
for path in P["controls"]:
    try:
        report["controls"][path] = hits(read(path))
    except OSError as exc:
        report["controls"][path] = [f"unreadable: {exc.strerror}"]

print(json.dumps(report))
"""


def public_texts():
    """Every certificate and signing request below the credentials folder (public data)."""
    return [p.read_text(errors="replace") for p in CREDENTIALS.rglob("*") if p.suffix in (".crt", ".csr", ".pem")]


def key_lines(path, public):
    """The base64 lines of a private key's PEM body that are not public data."""
    pem = path.read_bytes()
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        key = None
    if key is not None:
        public = public + [key.public_key().public_bytes(serialization.Encoding.PEM,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()]
    lines = [line.strip() for line in pem.decode(errors="replace").splitlines()]
    body = [line for line in lines if line and not line.startswith("-----") and ":" not in line]
    # 24 base64 characters (18 random bytes) cannot appear by chance.
    return [line for line in body if len(line) >= 24 and not any(line in text for text in public)]


def password(path):
    """A password file as the password lookup reads it."""
    return path.read_text().split(" salt=")[0].strip()


@functools.cache
def secrets():
    """[(label, value)]: what must never leak (labels are names, never values). Read when a test
    first asks, not at collection: by then test_rotate_secrets.py has changed them."""
    out = []
    public = public_texts()
    for path in sorted(CREDENTIALS.rglob("*")):
        if not path.is_file():
            continue
        label = str(path.relative_to(CREDENTIALS))
        if path.suffix == ".key":
            out += [(f"{label} (private key line {n})", line) for n, line in enumerate(key_lines(path, public), 1)]
        elif path.parent == CREDENTIALS:
            out.append((label, password(path)))
    if RETIRED.is_dir():
        out += [(f"retired {path.name}", password(path)) for path in sorted(RETIRED.iterdir()) if path.is_file()]
    # An empty or short value would match everywhere: refuse it rather than scan with it.
    assert out and all(len(value) >= 16 for _label, value in out), [label for label, value in out if len(value) < 16]
    return out


def found_in(text):
    return sorted({label for label, value in secrets() if value in text})


def scan_host(name):
    groups = set(RUNNER.get_variables(name).get("group_names", []))
    controls = [path for group, files in CONTROLS.items() if group in groups for path in files]
    payload = {"secrets": secrets(), "readable_roots": READABLE_ROOTS, "max_file": MAX_FILE,
               "docker": name in APP_HOSTS, "database": KIT["kit_db_name"] if name in DATABASE_HOSTS else "",
               "controls": controls}
    program = SCANNER.replace("@PAYLOAD@", base64.b64encode(json.dumps(payload).encode()).decode())
    proc = subprocess.run(["docker", "exec", "-i", container(name), "python3", "-"], input=program.encode(),
                          capture_output=True, timeout=900, check=False)
    assert proc.returncode == 0, f"{name}: the scan failed: {proc.stderr[-2000:].decode(errors='replace')}"
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def site_run(production_site_run):
    """The production run (conftest.py), as this file reads it."""
    return {"rc": production_site_run["proc"].returncode, "output": production_site_run["output"],
            "seconds": production_site_run["seconds"]}


@pytest.fixture(scope="module")
def scans(site_run):
    """Each host's report, taken after the run (its journal holds the run's commands)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(HOSTS)) as pool:
        return dict(zip(HOSTS, pool.map(scan_host, HOSTS)))


def changed_tasks(out):
    """[(task, host)] of every `changed:` line in a run's output."""
    found, task = [], None
    for line in out.splitlines():
        if line.startswith("TASK [") or line.startswith("RUNNING HANDLER ["):
            task = line.split("[", 1)[1].rsplit("]", 1)[0]
        elif line.startswith("changed: ["):
            found.append((task, line.split("[", 1)[1].split("]", 1)[0]))
    return found


def test_no_secret_in_the_output_of_site_yml(site_run):
    out = site_run["output"]
    lines = [n for n, line in enumerate(out.splitlines(), 1) if any(value in line for _l, value in secrets())]
    assert not lines, f"{found_in(out)} in site.yml's -vvv --diff output, lines {lines[:20]}"


def test_site_yml_wrote_the_secrets_and_keys_again(site_run, request):
    """The scanned run really handled secrets: it succeeded, changed every host (a new TLS key on
    each), wrote the removed password files again with their secrets (the scan's control, below,
    finds each in its file), and nothing in its output holds one (the test above)."""
    out = site_run["output"]
    report(request, f"site.yml -vvv --diff (production inventory, SSH) with new keys and rewritten password files: "
                    f"{site_run['seconds']:.0f} s")
    recap = {m.group(1): m.groups()[1:] for m in RECAP_RE.finditer(out)}
    # Its output is shown only if it holds no secret (the test above says which).
    tail = out[-4000:] if not found_in(out) else "(output withheld: it holds a secret)"
    assert site_run["rc"] == 0 and set(HOSTS) <= set(recap), tail
    assert all(values[1:] == ("0", "0") for values in recap.values()), recap
    assert all(int(recap[name][0]) > 0 for name in HOSTS), recap
    changed = changed_tasks(out)
    for name in APP_HOSTS:
        assert any(host == name and "password" in (task or "").lower() for task, host in changed), \
            (name, [task for task, host in changed if host == name])
    for name in HOSTS:
        assert any(host == name and "key" in (task or "").lower() for task, host in changed), \
            (name, [task for task, host in changed if host == name])


def test_the_scan_finds_each_secret_where_it_belongs(scans):
    """Its control: the root-only files that hold a secret by design are found to hold it."""
    for name, report in scans.items():
        groups = set(RUNNER.get_variables(name).get("group_names", []))
        for group, files in CONTROLS.items():
            if group not in groups:
                continue
            for path, secret in files.items():
                assert secret in report["controls"][path], f"{name}:{path}: {report['controls'][path]}"
        assert report["files"] > 100, f"{name}: only {report['files']} readable files scanned"
        assert not report["errors"], f"{name}: {report['errors']}"


@pytest.mark.parametrize("category", ["a file others can read", "a log file", "a command line", "the journal",
                                      "docker inspect", "docker logs", "pg_stat_statements"])
def test_no_secret_on_any_host(scans, category):
    leaks = {name: report["found"].get(category) for name, report in scans.items() if report["found"].get(category)}
    assert not leaks, f"secrets in {category}: {leaks}"


def test_no_secret_in_docker_inspect_of_the_scenarios_containers():
    inspect = subprocess.run(["docker", "inspect", *[container(name) for name in HOSTS]], capture_output=True,
                             text=True, timeout=120, check=True).stdout
    assert not found_in(inspect), f"{found_in(inspect)} in docker inspect of the scenario's containers"
