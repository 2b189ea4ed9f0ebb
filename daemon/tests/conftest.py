"""Fixtures for the daemon's tests: a throwaway PostgreSQL cluster with a
least-privilege database on it, a real Redis with the kit's ACL, and the daemon
started in-process or as a subprocess. Helpers live in daemon_helpers.py.

Self-contained: nothing comes from tests/unit/conftest.py. The cluster is
made by the kit's tests/pgserver.py (the plugins' tests use it too), imported
by its path. Every test that needs a real server (one of SERVER_FIXTURES,
directly or through another fixture) is marked `server`, so that
`pytest -m 'not server' daemon/tests` runs the rest without starting any.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import signal
import subprocess
import sys
import time
import uuid

import pytest

from .daemon_helpers import (APP, APP_PASSWORD, OWNER, ROOT,
                            DaemonProcess, PgDb, RedisServer, free_port, start_redis)

HERE = pathlib.Path(__file__).resolve().parent
SERVER_FIXTURES = frozenset({"pg_server", "pg_two_servers", "redis_server"})


def pytest_configure(config):
    # Registered in the kit's pytest.ini too; here for a run that does not read it.
    if "server" not in [line.split(":")[0].strip() for line in config.getini("markers")]:
        config.addinivalue_line("markers", "server: needs a real PostgreSQL or Redis server")


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items):
    for item in items:
        if HERE in item.path.parents and SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.server)


def _pgserver_module():
    """tests/pgserver.py, loaded by path (there is one implementation, shared with tests/unit)."""
    name = "kit_tests_pgserver"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / "pgserver.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def pg_server():
    """A real, throwaway PostgreSQL cluster for the session (tests/pgserver.py)."""
    server = _pgserver_module().PgServer().start()
    yield server
    server.stop()


def kit_database(pg_server, name=None):
    """A database set up the way the kit does it: tables owned by a NOLOGIN owner
    role, schema.sql and the numbered migrations applied AS the owner, and an
    application role limited to DML through grants and default privileges."""
    name = name or "daemon_" + uuid.uuid4().hex[:8]
    pg_server.psql(
        f"DO $$ BEGIN "
        f"IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{OWNER}') THEN CREATE ROLE {OWNER} NOLOGIN; END IF; "
        f"IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{APP}') THEN CREATE ROLE {APP} LOGIN; END IF; "
        f"END $$; ALTER ROLE {APP} PASSWORD '{APP_PASSWORD}'")
    pg_server.psql(f'CREATE DATABASE "{name}" OWNER {OWNER}')
    pg_server.psql(
        f'REVOKE ALL ON DATABASE "{name}" FROM PUBLIC; GRANT CONNECT ON DATABASE "{name}" TO {APP}; '
        f"REVOKE ALL ON SCHEMA public FROM PUBLIC; GRANT USAGE ON SCHEMA public TO {APP}; "
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {OWNER} IN SCHEMA public "
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {APP}; "
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {OWNER} IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {APP};",
        name)
    pg_server.psql(f"SET ROLE {OWNER};\n" + (ROOT / "files" / "schema.sql").read_text(), name)
    pg_server.psql(
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {APP}; "
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {APP};", name)
    # Later migrations, like the kit's pg_schema_migrate: as the owner, no
    # explicit grant (the default privileges must cover them).
    for path in sorted((ROOT / "files").glob("[0-9][0-9][0-9][0-9]_*.sql")):
        pg_server.psql(f"SET ROLE {OWNER};\n" + path.read_text(), name)
    return PgDb(pg_server, name)


@pytest.fixture(scope="session")
def pg_db(pg_server):
    """The kit's database on the session's server (kit_database)."""
    return kit_database(pg_server)


@pytest.fixture(scope="module")
def pg_two_servers():
    """Two throwaway servers, each with the kit's database under the same name: the
    members of a replicated cluster as the daemon's multi-host DB_HOST sees them."""
    module = _pgserver_module()
    servers = [module.PgServer().start() for _ in range(2)]
    try:
        name = "daemon_" + uuid.uuid4().hex[:8]
        yield [kit_database(server, name) for server in servers]
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def pg(pg_db):
    """The database, emptied before the test."""
    pg_db.truncate()
    return pg_db


@pytest.fixture
def pg_paused(pg_server):
    """Stop the cluster for the test (resumed afterwards, whatever happens)."""
    pg_server.pause()
    state = {"paused": True}

    def resume():
        if state["paused"]:
            pg_server.resume()
            state["paused"] = False

    yield resume
    resume()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    port = free_port()
    proc, admin = start_redis(tmp_path_factory.mktemp("redis"), ["--port", str(port)], port=port)
    server = RedisServer(port, proc, admin)
    yield server
    server.thaw()
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def redis_clean(redis_server):
    redis_server.admin.flushall()
    return redis_server


@pytest.fixture
def start_app():
    """start_app(cfg) -> a running in-process daemon on a free port; stopped after the test."""
    from claude_daemon.api import App

    apps = []

    def start(cfg, background=True):
        app = App(cfg).start(host="127.0.0.1", port=0, background=background)
        apps.append(app)
        return app

    yield start
    for app in apps:
        app.stop()


@pytest.fixture
def databases():
    """databases(cfg, start=True) -> a Database; closed after the test."""
    from claude_daemon.db import Database

    created = []

    def make(cfg, start=True, background=False):
        db = Database(cfg)
        created.append(db)
        if start:
            db.start(background=background)
        return db

    yield make
    for db in created:
        db.close()


@pytest.fixture
def daemon_process(tmp_path):
    procs = []

    def start(env):
        proc = DaemonProcess(env, tmp_path / f"daemon-{len(procs)}.log")
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop(signal.SIGKILL)
