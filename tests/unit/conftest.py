"""Make the kit's plugins importable the way Ansible loads them.

Modules import their helpers as `ansible.module_utils.claude_pg` (ansible.cfg's
module_utils path); here the same directory is added to that package's path.
"""

import importlib.util
import pathlib
import sys

import pytest

import ansible.module_utils

ROOT = pathlib.Path(__file__).resolve().parents[2]
ansible.module_utils.__path__.append(str(ROOT / "plugins" / "module_utils"))


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
