"""The collection-install test: build claude_kit.stack, install the tarball where
no kit checkout is, and use it as any other project would.

    ./kit collection-test        (part of ./kit test; or: .venv/bin/python tests/collection/run.py)

1. `ansible-galaxy collection build` of the checkout; the tarball's size and
   content are printed, and what build_ignore must keep out is checked.
2. In a fresh temporary directory (cwd there, no ansible.cfg of the kit, a
   collections path of its own): `ansible-galaxy collection install --no-deps`
   of the tarball. Its dependencies (community.postgresql, community.docker,
   ansible.posix) must resolve from the `ansible` package in site-packages.
3. A throwaway PostgreSQL (tests/pgserver.py) on 127.0.0.1 that asks for a
   password over TCP; playbook.yml applies the collection's schema, loads an
   SQLite file of tests/fixtures/make_legacy_sqlite.py with
   claude_kit.stack.sqlite_to_postgres, checks the counts of
   claude_kit.stack.pg_row_counts, a passing claude_kit.stack.migration_verify
   and a failing one once a row is changed, then applies the role
   claude_kit.stack.sqlite_migration to localhost.

Any failure raises, so the step fails loudly. Runs as root on Debian (the
PostgreSQL server binaries of the postgresql package; su for the role's become).
"""

from __future__ import annotations

import glob
import json
import os
import pathlib
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import tempfile

KIT = pathlib.Path(__file__).resolve().parents[2]
HERE = pathlib.Path(__file__).resolve().parent
BIN = pathlib.Path(sys.executable).parent
sys.path.insert(0, str(KIT / "tests"))

from pgserver import PgServer  # importable only after the sys.path insert above

# What must never be in the tarball (build_ignore in galaxy.yml).
FORBIDDEN = (".venv/", "collections/", ".cache/", ".git/", ".ci/", "molecule/", "bench/", "tests/output/",
             "inventory/lab/credentials/", ".pytest_cache/")
MAX_TARBALL_BYTES = 2 * 1024 * 1024
PASSWORD = "collection-test-0123456789"
USER = "kit_migrator"


class TestFailure(Exception):
    """What the collection does differs from what it must do."""


def run(cmd, **kwargs):
    print("+", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run([str(c) for c in cmd], check=True, text=True, **kwargs)


def clean_env(work):
    """The environment of a project that has only installed the tarball."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "MOLECULE_", "PYTEST_"))}
    env.pop("PYTHONPATH", None)
    empty_cfg = work / "ansible.cfg"
    empty_cfg.write_text("[defaults]\n", encoding="utf-8")
    env.update(
        ANSIBLE_CONFIG=str(empty_cfg),
        ANSIBLE_COLLECTIONS_PATH=str(work / "collections"),
        ANSIBLE_HOME=str(work / "ansible-home"),
        ANSIBLE_LOCAL_TEMP=str(work / "ansible-tmp"),
        ANSIBLE_ROLES_PATH=str(work / "roles"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_RETRY_FILES_ENABLED="0",
    )
    return env


def build(work):
    dist = work / "dist"
    run([BIN / "ansible-galaxy", "collection", "build", "--output-path", dist, KIT], cwd=work)
    tarballs = glob.glob(str(dist / "claude_kit-stack-*.tar.gz"))
    if len(tarballs) != 1:
        raise TestFailure(f"expected one tarball in {dist}, found {tarballs}")
    tarball = pathlib.Path(tarballs[0])
    with tarfile.open(tarball) as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
    size = tarball.stat().st_size
    print(f"{tarball.name}: {size} bytes compressed, {len(members)} files, "
          f"{sum(m.size for m in members)} bytes unpacked")
    by_top = {}
    for member in members:
        top = member.name.split("/", 1)[0] if "/" in member.name else "(top)"
        count, total = by_top.get(top, (0, 0))
        by_top[top] = (count + 1, total + member.size)
    for top, (count, total) in sorted(by_top.items()):
        print(f"  {top:<14} {count:4d} files {total:9d} bytes")
    bad = [m.name for m in members if m.name.startswith(FORBIDDEN) or "/__pycache__/" in m.name]
    if bad:
        raise TestFailure(f"the tarball holds what build_ignore should keep out: {bad[:10]}")
    for needed in ("MANIFEST.json", "FILES.json", "meta/runtime.yml", "plugins/modules/pg_row_counts.py",
                   "roles/sqlite_migration/tasks/main.yml", "files/schema.sql"):
        if needed not in {m.name for m in members}:
            raise TestFailure(f"{needed} is missing from the tarball")
    if size > MAX_TARBALL_BYTES:
        raise TestFailure(f"the tarball is {size} bytes, more than {MAX_TARBALL_BYTES}: check build_ignore")
    return tarball


def install(work, env, tarball):
    run([BIN / "ansible-galaxy", "collection", "install", "--no-deps", "-p", work / "collections", tarball],
        cwd=work, env=env)
    listing = run([BIN / "ansible-galaxy", "collection", "list", "--format", "json"], cwd=work, env=env,
                  capture_output=True).stdout
    where = {}
    for path, collections in json.loads(listing).items():
        for name in collections:
            where.setdefault(name, []).append(path)
    ours = where.get("claude_kit.stack", [])
    if ours != [str(work / "collections" / "ansible_collections")]:
        raise TestFailure(f"claude_kit.stack resolves from {ours}, not only from the fresh collections path")
    for dep in ("community.postgresql", "community.docker", "ansible.posix"):
        if not any("site-packages" in p for p in where.get(dep, [])):
            raise TestFailure(f"dependency {dep} does not resolve from site-packages: {where.get(dep)}")
        print(f"{dep}: {where[dep]}")
    return work / "collections" / "ansible_collections" / "claude_kit" / "stack"


def start_postgresql():
    """A throwaway server whose TCP logins need a password (scram-sha-256)."""
    pg = PgServer().start()
    hba = pathlib.Path(pg.dir, "data", "pg_hba.conf")
    hba.write_text("local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n", encoding="utf-8")
    pg.psql("SELECT pg_reload_conf()")
    pg.psql(f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'")
    for db in ("migrated", "role_target"):
        pg.psql(f"CREATE DATABASE {db} OWNER {USER}")
    # The password is really asked for.
    denied = subprocess.run(["psql", "-XAtq", "-h", "127.0.0.1", "-p", str(pg.port), "-U", USER, "-d", "migrated",
                             "-w", "-c", "SELECT 1"], capture_output=True, text=True, env={**os.environ, "PGPASSWORD": "wrong"},
                            check=False)
    if denied.returncode == 0:
        raise TestFailure("the throwaway server let a wrong password in")
    return pg


def legacy_sqlite(path):
    run([sys.executable, KIT / "tests" / "fixtures" / "make_legacy_sqlite.py", path])
    with sqlite3.connect(path) as db:
        return {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # nosec: fixed names
                for t in ("users", "usage_data", "alerts", "predictions")}


def main():
    work = pathlib.Path(tempfile.mkdtemp(prefix="kit-collection-test-"))
    # Others (the postgres user of the throwaway server) may traverse it.
    os.chmod(work, 0o755)
    pg = None
    try:
        env = clean_env(work)
        tarball = build(work)
        installed = install(work, env, tarball)
        pg = start_postgresql()
        expected = legacy_sqlite(work / "legacy.db")
        legacy_sqlite(work / "legacy-role.db")
        shutil.copy(HERE / "playbook.yml", work / "playbook.yml")
        (work / "inventory").write_text(
            f"localhost ansible_connection=local ansible_python_interpreter={sys.executable} "
            # No sudo on the controller; root becomes root with su, without a password.
            "ansible_become_method=ansible.builtin.su\n", encoding="utf-8")
        (work / "vars.json").write_text(json.dumps({
            "pg_port": pg.port, "pg_user": USER, "pg_password": PASSWORD,
            "collection_files": str(installed / "files"),
            "sqlite_path": str(work / "legacy.db"), "sqlite_role_path": str(work / "legacy-role.db"),
            "expected_counts": expected,
        }), encoding="utf-8")
        run([BIN / "ansible-playbook", "-i", "inventory", "playbook.yml", "-e", "@vars.json"], cwd=work, env=env)
        # Independently of the modules: what is in PostgreSQL now.
        for db in ("migrated", "role_target"):
            got = {t: int(pg.psql(f"SELECT count(*) FROM {t}", db=db)) for t in expected}
            if got != expected:
                raise TestFailure(f"{db}: {got}, expected {expected}")
        changed = pg.psql("SELECT tokens_used FROM usage_data WHERE id = 7", db="migrated").strip()
        if changed != "71":
            raise TestFailure(f"usage_data row 7 in migrated has tokens_used {changed}, expected 71 (70 + 1)")
        print(f"collection test passed: {tarball.name} installed and used, counts {expected}")
    finally:
        if pg is not None:
            pg.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except (TestFailure, subprocess.CalledProcessError) as exc:
        print(f"collection test FAILED: {exc}", file=sys.stderr)
        sys.exit(1)
