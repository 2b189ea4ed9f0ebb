"""Filter of the pgbouncer role (roles/pgbouncer): pool sizes derived from PostgreSQL's limit.

A pure function, no I/O; unit-tested in tests/unit/test_pgbouncer_filter.py.

    {{ {'max_connections': 100, 'superuser_reserved_connections': 3, 'reserved_connections': 10,
        'daemon_pools': [20, 20], 'enabled': true} | pgbouncer_pool }}

The server connections the application role may hold are what PostgreSQL has
left once the superusers' slots and the kit's other clients (backups,
monitoring, migration: kit_db_reserved_connections) are set aside:

    budget = max_connections - superuser_reserved_connections - reserved_connections

With PgBouncer on, its pool for the application (default_pool_size +
reserve_pool_size, capped by max_db_connections) must fit the budget; by
default it is the smaller of the budget and the daemons' own pools added up
(more server connections than clients could ever use buy nothing). The
daemons' pools must fit PgBouncer's max_client_conn, which by default is
twice their sum (a daemon being replaced runs beside its successor for a
moment) plus room for operators. With PgBouncer off, the daemons' pools
themselves must fit the budget.
"""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

# Client slots beyond the daemons' pools for operators' psql sessions and checks.
CLIENT_HEADROOM = 20


def _int(settings, key, default=None, minimum=0):
    value = settings.get(key, default)
    if isinstance(value, bool):
        raise AnsibleFilterError(f"pgbouncer_pool: {key}={value!r} is not a whole number")
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        raise AnsibleFilterError(f"pgbouncer_pool: {key}={value!r} is not a whole number") from None
    if number < minimum:
        raise AnsibleFilterError(f"pgbouncer_pool: {key}={number} must be at least {minimum}")
    return number


def _bool(value):
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _pools(settings):
    pools = settings.get("daemon_pools") or []
    if not isinstance(pools, (list, tuple)):
        raise AnsibleFilterError("pgbouncer_pool: daemon_pools must be a list of each app host's pool size")
    return [_int({"daemon_pools[]": p}, "daemon_pools[]", minimum=1) for p in pools]


def _budget_text(s):
    return (f"postgresql_max_connections {s['max_connections']} - superuser_reserved_connections "
            f"{s['superuser_reserved_connections']} - kit_db_reserved_connections {s['reserved_connections']} "
            f"= {s['budget']}")


def _demand_text(s):
    pools = s["daemon_pools"]
    each = f"{pools[0]} each" if len(set(pools)) == 1 else "+".join(str(p) for p in pools)
    hosts = f"{len(pools)} app host" + ("" if len(pools) == 1 else "s")
    return f"{hosts} x daemon_db_pool_max ({each}) = {s['client_demand']}"


def _problems(s, enabled):
    if s["budget"] < 1:
        return [f"PostgreSQL leaves the application no connection: {_budget_text(s)}; raise "
                "postgresql_max_connections or lower kit_db_reserved_connections"]
    if not enabled:
        if s["client_demand"] > s["budget"]:
            return [f"with kit_pgbouncer_enabled false the daemons connect directly and could exhaust PostgreSQL: "
                    f"{_demand_text(s)} > {_budget_text(s)}; lower daemon_db_pool_max, raise "
                    "postgresql_max_connections or switch PgBouncer on"]
        return []
    problems = []
    pool = s["default_pool_size"] + s["reserve_pool_size"]
    if pool > s["budget"]:
        problems.append(f"pgbouncer_default_pool_size {s['default_pool_size']} + pgbouncer_reserve_pool_size "
                        f"{s['reserve_pool_size']} = {pool} server connections exceed what PostgreSQL leaves the "
                        f"application: {_budget_text(s)}")
    if s["max_client_conn"] < s["client_demand"]:
        problems.append(f"pgbouncer_max_client_conn {s['max_client_conn']} is below the daemons' pools: "
                        f"{_demand_text(s)}; raise it or lower daemon_db_pool_max")
    return problems


def pgbouncer_pool(settings):
    """The derived pool settings, with `problems` (sentences naming the variables; empty when good).

    Keys read: max_connections, superuser_reserved_connections (3), reserved_connections (0),
    daemon_pools (a list, one pool size per app host), enabled (true), and the
    operator's choices default_pool_size, reserve_pool_size, max_client_conn
    (0 or absent: derived). Returned: budget, client_demand, default_pool_size,
    reserve_pool_size, max_db_connections, max_client_conn, problems."""
    if not hasattr(settings, "get"):
        raise AnsibleFilterError("pgbouncer_pool expects a mapping")
    s = {
        "max_connections": _int(settings, "max_connections", minimum=1),
        "superuser_reserved_connections": _int(settings, "superuser_reserved_connections", 3),
        "reserved_connections": _int(settings, "reserved_connections", 0),
        "daemon_pools": _pools(settings),
    }
    s["budget"] = s["max_connections"] - s["superuser_reserved_connections"] - s["reserved_connections"]
    s["client_demand"] = sum(s["daemon_pools"])
    s["reserve_pool_size"] = _int(settings, "reserve_pool_size", 0)
    chosen_pool = _int(settings, "default_pool_size", 0)
    s["default_pool_size"] = chosen_pool or max(1, min(s["budget"] - s["reserve_pool_size"], s["client_demand"]))
    # PgBouncer's hard cap for the database: never more server connections than the pool and its reserve.
    s["max_db_connections"] = s["default_pool_size"] + s["reserve_pool_size"]
    s["max_client_conn"] = _int(settings, "max_client_conn", 0) or 2 * s["client_demand"] + CLIENT_HEADROOM
    s["problems"] = _problems(s, _bool(settings.get("enabled", True)))
    return s


class FilterModule:
    def filters(self):
        return {"pgbouncer_pool": pgbouncer_pool}
