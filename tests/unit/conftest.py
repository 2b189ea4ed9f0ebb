"""Make the kit's plugins importable the way Ansible loads them.

The modules import their helpers by the collection's path
(`ansible_collections.claude_kit.stack.plugins.module_utils.claude_pg`). Under
`ansible-test units` the collection is already on that path; under plain pytest
a link `ansible_collections/claude_kit/stack` -> the checkout is made in a
temporary directory, which is put on sys.path.
"""

import atexit
import importlib.util
import os
import pathlib
import shutil
import sys
import tempfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Under ansible-test units the test files are imported as tests.unit.*: keep
# `from conftest import load` working there too.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))


def _collection_on_path():
    try:
        importlib.import_module("ansible_collections.claude_kit.stack.plugins.module_utils.claude_pg")
        return
    except ImportError:
        pass
    top = tempfile.mkdtemp(prefix="kit-collection-")
    atexit.register(shutil.rmtree, top, True)
    parent = pathlib.Path(top, "ansible_collections", "claude_kit")
    parent.mkdir(parents=True)
    os.symlink(ROOT, parent / "stack")
    sys.path.insert(0, top)
    # ansible_collections is a namespace package; forget a cached lookup of it.
    for name in [n for n in sys.modules if n == "ansible_collections" or n.startswith("ansible_collections.claude_kit")]:
        del sys.modules[name]
    importlib.invalidate_caches()


_collection_on_path()


def load(relpath, name):
    """Import a plugin file (which is not in a package) as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / relpath)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


sys.path.insert(0, str(ROOT / "tests"))


@pytest.fixture(scope="session")
def pg_server():
    """A real, throwaway PostgreSQL server (tests/pgserver.py), shared by the session."""
    from pgserver import PgServer

    server = PgServer().start()
    yield server
    server.stop()


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config, items):
    """Mark `server` (pytest.ini) every test here that needs the real PostgreSQL: those
    using pg_server, directly or through another fixture (such as pg_db)."""
    if "server" not in [line.split(":")[0].strip() for line in config.getini("markers")]:
        # Run with another ini (ansible-test units): register it here, so it is no unknown mark.
        config.addinivalue_line("markers", "server: needs a real PostgreSQL or Redis server")
    here = pathlib.Path(__file__).resolve().parent
    for item in items:
        if here in item.path.parents and "pg_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.server)
