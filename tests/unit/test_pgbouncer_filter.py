"""The pgbouncer role's pool arithmetic (plugins/filter/pgbouncer.py): the
application's server connections can never exceed what PostgreSQL leaves it,
and every refusal names the variables and the numbers."""

import pathlib

import pytest
import yaml
from ansible.errors import AnsibleFilterError

from ansible_collections.claude_kit.stack.plugins.filter.pgbouncer import pgbouncer_pool

ROOT = pathlib.Path(__file__).resolve().parents[2]


def pool(**overrides):
    settings = {"max_connections": 100, "superuser_reserved_connections": 3, "reserved_connections": 10,
                "daemon_pools": [20, 20], "enabled": True}
    settings.update(overrides)
    return pgbouncer_pool(settings)


def test_defaults_derive_the_pool_from_the_daemons_and_the_budget():
    result = pool()
    assert result["budget"] == 87
    assert result["client_demand"] == 40
    # No more server connections than the clients could ever use.
    assert result["default_pool_size"] == 40
    assert result["max_db_connections"] == 40
    assert result["max_client_conn"] == 2 * 40 + 20
    assert result["problems"] == []


def test_many_app_hosts_are_bounded_by_the_budget():
    result = pool(daemon_pools=[20] * 10)
    assert result["default_pool_size"] == 87
    assert result["max_db_connections"] == 87
    assert result["max_client_conn"] == 420
    assert result["problems"] == []


def test_reserve_pool_counts_against_the_budget():
    result = pool(daemon_pools=[20] * 10, reserve_pool_size=7)
    assert result["default_pool_size"] == 80
    assert result["max_db_connections"] == 87
    assert result["problems"] == []


@pytest.mark.parametrize("pools", [[1], [5, 5, 5], [20] * 50, [200] * 3])
@pytest.mark.parametrize("max_connections", [20, 100, 500])
def test_derived_pool_never_exceeds_the_budget(pools, max_connections):
    result = pool(max_connections=max_connections, daemon_pools=pools)
    assert result["problems"] == []
    assert 1 <= result["max_db_connections"] <= result["budget"]
    assert result["max_client_conn"] >= result["client_demand"]


def test_pool_above_the_budget_is_refused_naming_the_variables_and_numbers():
    (problem,) = pool(default_pool_size=80, reserve_pool_size=10)["problems"]
    assert "pgbouncer_default_pool_size 80 + pgbouncer_reserve_pool_size 10 = 90" in problem
    assert "postgresql_max_connections 100 - superuser_reserved_connections 3" in problem
    assert "kit_db_reserved_connections 10 = 87" in problem


def test_pool_exactly_the_budget_is_accepted():
    assert pool(default_pool_size=87)["problems"] == []


def test_too_few_client_slots_are_refused():
    (problem,) = pool(max_client_conn=30)["problems"]
    assert "pgbouncer_max_client_conn 30" in problem
    assert "2 app hosts x daemon_db_pool_max (20 each) = 40" in problem


def test_without_pgbouncer_the_daemons_must_fit_the_budget():
    assert pool(enabled=False)["problems"] == []
    (problem,) = pool(enabled="false", daemon_pools=[30, 30, 30])["problems"]
    assert "kit_pgbouncer_enabled false" in problem
    assert "3 app hosts x daemon_db_pool_max (30 each) = 90 > postgresql_max_connections 100" in problem
    assert "= 87" in problem


def test_one_app_host_is_singular():
    (problem,) = pool(enabled=False, daemon_pools=[90])["problems"]
    assert "1 app host x daemon_db_pool_max (90 each) = 90 >" in problem


def test_uneven_pools_are_listed():
    (problem,) = pool(enabled=False, daemon_pools=[50, 40])["problems"]
    assert "(50+40) = 90" in problem


def test_no_budget_left_is_refused_with_or_without_pgbouncer():
    for enabled in (True, False):
        (problem,) = pool(max_connections=13, enabled=enabled)["problems"]
        assert "leaves the application no connection" in problem
        assert "= 0" in problem


def test_no_app_host_needs_one_server_connection():
    result = pool(daemon_pools=[])
    assert result["default_pool_size"] == 1
    assert result["max_client_conn"] == 20
    assert result["problems"] == []


def test_numbers_as_text_from_jinja():
    result = pool(max_connections="200", daemon_pools=["20", "20"], default_pool_size="0")
    assert result["budget"] == 187
    assert result["default_pool_size"] == 40


@pytest.mark.parametrize("bad", [{"max_connections": "many"}, {"max_connections": 0}, {"daemon_pools": "20"},
                                 {"daemon_pools": [0]}, {"reserve_pool_size": -1}, {"default_pool_size": True}])
def test_bad_numbers_raise(bad):
    with pytest.raises(AnsibleFilterError):
        pool(**bad)


def test_not_a_mapping_raises():
    with pytest.raises(AnsibleFilterError):
        pgbouncer_pool([100])


def test_role_default_mirrors_the_postgresql_roles_max_connections():
    # The pgbouncer role cannot see the postgresql role's defaults (another role,
    # included separately): its fallback must be the same number.
    postgresql = yaml.safe_load((ROOT / "roles/postgresql/defaults/main.yml").read_text())
    pgbouncer = (ROOT / "roles/pgbouncer/defaults/main.yml").read_text()
    assert f"postgresql_max_connections | default({postgresql['postgresql_max_connections']})" in pgbouncer
