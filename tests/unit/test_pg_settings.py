"""pg_settings: what to set, reset and report; and the same against a real PostgreSQL."""

import json

import pytest

from conftest import load

ps = load("plugins/modules/pg_settings.py", "pg_settings")


def test_value_items():
    assert ps.value_items("work_mem", "4MB") == ["4MB"]
    assert ps.value_items("max_connections", 100) == ["100"]
    assert ps.value_items("jit", False) == ["off"]
    assert ps.value_items("shared_preload_libraries", ["pg_stat_statements", "auto_explain"]) == [
        "pg_stat_statements", "auto_explain"]
    # One literal 'a,b' would become the single library "a,b": split like a list.
    assert ps.value_items("shared_preload_libraries", "pg_stat_statements, auto_explain") == [
        "pg_stat_statements", "auto_explain"]
    # Not a quoted list: the comma is part of the value.
    assert ps.value_items("listen_addresses", "localhost,10.0.0.1") == ["localhost,10.0.0.1"]


def test_file_items_and_comparable_agree():
    assert ps.file_items("shared_preload_libraries", 'pg_stat_statements, "auto-explain"') == [
        "pg_stat_statements", "auto-explain"]
    assert ps.comparable("shared_preload_libraries", ["pg_stat_statements", "auto-explain"]) == [
        "pg_stat_statements", "auto-explain"]
    assert ps.comparable("log_destination", ["stderr", "csvlog"]) == ps.file_items("log_destination", "stderr, csvlog")


def test_plan_sets_only_what_differs():
    to_set, to_reset, unmanaged, keep = ps.plan(
        {"work_mem": ["4MB"], "shared_buffers": ["256MB"]}, {"work_mem": ["4MB"], "shared_buffers": ["128MB"]}, [], True)
    assert to_set == {"shared_buffers": ["256MB"]}
    assert to_reset == [] and unmanaged == {}
    assert keep == ["shared_buffers", "work_mem"]


def test_plan_resets_what_the_kit_set_and_no_longer_declares():
    to_set, to_reset, unmanaged, keep = ps.plan(
        {"work_mem": ["4MB"]}, {"work_mem": ["4MB"], "log_min_duration_statement": ["250ms"]},
        ["work_mem", "log_min_duration_statement"], True)
    assert to_set == {} and to_reset == ["log_min_duration_statement"]
    assert unmanaged == {}
    assert keep == ["work_mem"]


def test_plan_reports_but_keeps_what_someone_set_by_hand():
    _set, to_reset, unmanaged, keep = ps.plan({"work_mem": ["4MB"]}, {"work_mem": ["4MB"], "log_temp_files": ["1MB"]},
                                              ["work_mem"], True)
    assert to_reset == []
    assert unmanaged == {"log_temp_files": ["1MB"]}
    assert keep == ["work_mem"]


def test_plan_without_reset_keeps_managing_removed_settings():
    _set, to_reset, _unmanaged, keep = ps.plan({}, {"work_mem": ["8MB"]}, ["work_mem"], False)
    assert to_reset == [] and keep == ["work_mem"]


def test_plan_forgets_a_managed_setting_already_gone_from_the_file():
    _set, to_reset, _unmanaged, keep = ps.plan({}, {}, ["work_mem"], True)
    assert to_reset == [] and keep == []


def test_statements_quote_names_and_pass_values_as_parameters():
    todo = ps.statements({"pg_stat_statements.max": ["5000"], "work_mem": ["4MB'; DROP TABLE x; --"]}, ["jit"])
    texts = [text for _q, _a, text in todo]
    assert texts[0] == "ALTER SYSTEM SET \"pg_stat_statements.max\" = '5000'"
    assert todo[1][1] == ["4MB'; DROP TABLE x; --"]  # a parameter, never SQL text
    assert texts[2] == 'ALTER SYSTEM RESET "jit"'


class FakeModule:
    def __init__(self, params, check_mode=False):
        self.params = dict(params)
        self.check_mode = check_mode

    def fail_json(self, **kwargs):
        raise AssertionError(kwargs)


@pytest.fixture()
def server_params(pg_server, tmp_path):
    return {
        "login_user": pg_server.user, "login_password": "", "login_host": pg_server.dir, "login_unix_socket": "",
        "login_port": pg_server.port, "ssl_mode": "prefer", "ca_cert": None, "ssl_cert": None, "ssl_key": None,
        "connect_timeout": 10, "db": "postgres", "reset_removed": True,
        "state_file": str(tmp_path / "pg_settings.json"),
    }


def file_value(pg_server, name):
    return pg_server.psql(
        "SELECT setting FROM pg_file_settings WHERE sourcefile LIKE '%%postgresql.auto.conf' AND name = '%s'" % name
    ).strip()


def test_against_postgresql_set_idempotent_reset_and_hand_made(pg_server, server_params):
    try:
        params = dict(server_params, settings={"log_min_duration_statement": "250ms", "work_mem": "6MB"})
        check = ps.run(FakeModule(params, check_mode=True))
        assert check["changed"] and file_value(pg_server, "work_mem") == ""
        first = ps.run(FakeModule(params))
        assert first["changed"] and first["set"] == {"log_min_duration_statement": "250ms", "work_mem": "6MB"}
        assert file_value(pg_server, "work_mem") == "6MB"
        assert ps.run(FakeModule(params))["changed"] is False

        pg_server.psql("ALTER SYSTEM SET log_temp_files = '1MB'")  # by hand, outside the kit
        params["settings"] = {"work_mem": "6MB"}
        second = ps.run(FakeModule(params))
        assert second["reset"] == ["log_min_duration_statement"]
        assert file_value(pg_server, "log_min_duration_statement") == ""
        assert second["unmanaged"] == {"log_temp_files": "1MB"}
        assert file_value(pg_server, "log_temp_files") == "1MB"
        assert json.load(open(server_params["state_file"]))["managed"] == ["work_mem"]
    finally:
        pg_server.psql("ALTER SYSTEM RESET ALL")


def test_against_postgresql_unknown_name_changes_nothing(pg_server, server_params):
    params = dict(server_params, settings={"work_mem": "7MB", "wrok_mem": "1MB"})
    with pytest.raises(ps.KitModuleError, match="wrok_mem"):
        ps.run(FakeModule(params))
    assert file_value(pg_server, "work_mem") == ""
