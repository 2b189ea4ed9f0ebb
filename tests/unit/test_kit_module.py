"""kit_module: the modules' one failure type and ending, the CPU count, the report table."""

import pytest

from ansible_collections.claude_kit.stack.plugins.module_utils import kit_module as km


def test_render_table_without_rows_is_the_header():
    assert km.render_table(("a", "bb"), []) == ["a | bb"]


class Ended(Exception):
    pass


class FakeModule:
    def __init__(self):
        self.ended = None

    def exit_json(self, **kwargs):
        self.ended = ("exit", kwargs)
        raise Ended()

    def fail_json(self, **kwargs):
        self.ended = ("fail", kwargs)
        raise Ended()


def test_end_module_exits_with_the_result():
    module = FakeModule()
    with pytest.raises(Ended):
        km.end_module(module, lambda: {"changed": True, "n": 1})
    assert module.ended == ("exit", {"changed": True, "n": 1})


def test_end_module_fails_with_the_message_and_the_result_so_far():
    module = FakeModule()
    result = {"changed": False, "tables": []}

    def work():
        try:
            raise km.KitModuleError("it broke", result)
        finally:
            result["tables"].append("late")  # added while unwinding: still reported

    with pytest.raises(Ended):
        km.end_module(module, work)
    assert module.ended == ("fail", {"msg": "it broke", "changed": False, "tables": ["late"]})


def test_end_module_lets_other_errors_through():
    module = FakeModule()
    with pytest.raises(ZeroDivisionError):
        km.end_module(module, lambda: 1 / 0)
    assert module.ended is None


def test_cpu_workers(monkeypatch):
    monkeypatch.setattr(km, "cpu_count", lambda: 16)
    assert km.cpu_workers() == 4 and km.cpu_workers(7) == 7 and km.cpu_workers(most=8) == 8
    monkeypatch.setattr(km, "cpu_count", lambda: 1)
    assert km.cpu_workers() == 1


def test_cpu_count_is_the_affinity():
    import os

    assert km.cpu_count() == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("module", ["host_resources", "migration_verify", "pg_row_counts", "pg_schema_migrate", "sqlite_to_postgres"])
def test_every_module_renders_its_documentation(module):
    import os
    import shutil
    import subprocess
    import sys

    from conftest import ROOT
    from test_sqlite_to_postgres_pg import ansible_env

    out = subprocess.run([(shutil.which("ansible-doc") or os.path.join(os.path.dirname(sys.executable), "ansible-doc")), "-M", str(ROOT / "plugins" / "modules"), module],
                         cwd=ROOT, env=ansible_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "EXAMPLES" in out.stdout and "RETURN VALUES" in out.stdout.upper() and "claude_kit.stack." + module in out.stdout
