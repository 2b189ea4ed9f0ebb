"""Filters that turn the postgresql role's settings into Patroni's configuration.

Pure functions, no I/O; unit-tested in tests/unit/test_patroni_filter.py.

- ``pg_conf_lines(text)``: the setting lines of a rendered configuration file
  (pg_hba.conf, pg_ident.conf) without comments and blank lines, as Patroni's
  ``pg_hba``/``pg_ident`` lists want them. The kit renders one template for
  both layouts, so a cluster and a single server admit exactly the same clients.
- ``pg_conf_parameters(text)``: ``name = value`` lines of a rendered
  postgresql.conf fragment as a mapping (quotes taken off; Patroni quotes again).
- ``patroni_parameters(settings)``: splits settings into the ones Patroni takes
  only from its dynamic configuration in the DCS (the same value on every
  member, e.g. max_connections: a standby with fewer than its primary cannot
  replay) and the ones each member's own file may carry.
- ``patroni_timing_problems(ttl, loop_wait, retry_timeout)``: Patroni's rule
  ``loop_wait + 2 * retry_timeout <= ttl`` and its minimums, as messages.
"""

from __future__ import annotations

import re

# Patroni (postgresql/config.py, CMDLINE_OPTIONS) passes these on postgres's
# command line from the dynamic configuration and ignores a member's local
# value. listen_addresses, port and cluster_name come from postgresql.listen
# and the scope; hot_standby and wal_log_hints Patroni forces on.
DCS_ONLY = frozenset({
    "max_connections", "max_wal_senders", "wal_keep_size", "wal_keep_segments",
    "max_prepared_transactions", "max_locks_per_transaction", "track_commit_timestamp",
    "max_replication_slots", "max_worker_processes", "wal_level",
})
PATRONI_OWNED = frozenset({"listen_addresses", "port", "cluster_name", "hot_standby", "wal_log_hints"})

_SETTING = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*=\s*(.*?)\s*$")


def pg_conf_lines(text):
    """Non-blank, non-comment lines of a rendered pg_hba.conf or pg_ident.conf, whitespace collapsed."""
    lines = []
    for line in str(text).splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            lines.append(" ".join(stripped.split()))
    return lines


def _unquote(value):
    if len(value) >= 2 and value[0] == "'" and value[-1] == "'":
        return value[1:-1].replace("''", "'")
    return value


def pg_conf_parameters(text):
    """Mapping of ``name = value`` lines; a line that is neither a setting nor a comment is an error."""
    settings = {}
    for number, line in enumerate(str(text).splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _SETTING.match(stripped)
        if not match:
            raise ValueError(f"line {number} is not 'name = value': {stripped!r}")
        settings[match.group(1)] = _unquote(match.group(2))
    return settings


def patroni_parameters(settings):
    """{'dcs': {...}, 'local': {...}, 'refused': [...]} from one mapping of settings."""
    dcs, local, refused = {}, {}, []
    for name, value in dict(settings).items():
        key = str(name).lower()
        if isinstance(value, (list, tuple)):
            # A list setting (shared_preload_libraries) as PostgreSQL reads it.
            value = ",".join(str(item) for item in value)
        if key in PATRONI_OWNED:
            refused.append(str(name))
        elif key in DCS_ONLY:
            dcs[str(name)] = str(value)
        else:
            local[str(name)] = str(value)
    return {"dcs": dcs, "local": local, "refused": sorted(refused)}


def patroni_timing_problems(ttl, loop_wait, retry_timeout):
    """Messages for Patroni timings that break its rule or minimums; empty when they are fine."""
    problems = []
    values = {}
    for name, value, minimum in (("ttl", ttl, 20), ("loop_wait", loop_wait, 1), ("retry_timeout", retry_timeout, 3)):
        try:
            number = int(value)
        except (TypeError, ValueError):
            problems.append(f"postgresql_patroni_{name} must be a whole number of seconds, not {value!r}")
            continue
        if isinstance(value, bool) or number != value and str(number) != str(value).strip():
            problems.append(f"postgresql_patroni_{name} must be a whole number of seconds, not {value!r}")
            continue
        if number < minimum:
            problems.append(f"postgresql_patroni_{name} is {number}; Patroni's minimum is {minimum}")
        values[name] = number
    if len(values) == 3 and values["loop_wait"] + 2 * values["retry_timeout"] > values["ttl"]:
        problems.append(
            "postgresql_patroni_loop_wait + 2 * postgresql_patroni_retry_timeout must not exceed "
            f"postgresql_patroni_ttl (Patroni's rule): {values['loop_wait']} + 2 * {values['retry_timeout']} "
            f"= {values['loop_wait'] + 2 * values['retry_timeout']} > {values['ttl']}"
        )
    return problems


MANAGED_KEY = "claude_kit_parameters"


_BOOLEAN_WORDS = {"true": "on", "on": "on", "yes": "on", "false": "off", "off": "off", "no": "off"}


def _canonical(value):
    if isinstance(value, bool):
        return "on" if value else "off"
    text = str(value)
    return _BOOLEAN_WORDS.get(text.lower(), text)


def _same(current, wanted):
    """Patroni keeps values as they were given: compare as text, true/on and false/off alike."""
    return _canonical(current) == _canonical(wanted)


def _differences(current, wanted, skip):
    """The keys of `wanted` (but `skip`) whose value `current` lacks or holds otherwise."""
    return {
        key: value for key, value in wanted.items()
        if key != skip and (key not in current or not _same(current[key], value))
    }


def patroni_config_patch(current, wanted, parameters):
    """The PATCH /config body that brings the dynamic configuration to what the kit declares.

    ``current``: GET /config's answer. ``wanted``: top-level keys (ttl, loop_wait,
    synchronous_mode, ...) and ``postgresql`` options other than parameters.
    ``parameters``: the PostgreSQL parameters the kit declares in the DCS. A
    parameter the kit set before (listed under ``claude_kit_parameters``) and no
    longer declares is taken back (null removes a key); one set by someone else
    is left alone. An empty mapping means nothing to change.
    """
    current = dict(current or {})
    wanted = dict(wanted)
    patch = _differences(current, wanted, skip="postgresql")
    cur_pg = dict(current.get("postgresql") or {})
    pg_patch = _differences(cur_pg, dict(wanted.get("postgresql") or {}), skip="parameters")
    cur_params = dict(cur_pg.get("parameters") or {})
    params_patch = {}
    for key, value in dict(parameters).items():
        if key not in cur_params or not _same(cur_params[key], value):
            params_patch[key] = str(value)
    for key in current.get(MANAGED_KEY) or []:
        if key not in parameters and key in cur_params:
            params_patch[key] = None
    if params_patch:
        pg_patch["parameters"] = params_patch
    if pg_patch:
        patch["postgresql"] = pg_patch
    managed = sorted(parameters)
    if sorted(current.get(MANAGED_KEY) or []) != managed:
        patch[MANAGED_KEY] = managed
    return patch


def patroni_member_line(member):
    """One member of GET /cluster as a line: name / role / state / timeline / lag."""
    member = dict(member)
    lag = member.get("lag")
    lag = "-" if lag is None else lag
    return " / ".join(str(part) for part in (
        member.get("name", "?"), member.get("role", "?"), member.get("state", "?"), member.get("timeline", "?"), lag))


class FilterModule:
    """Ansible filter plugin entry point."""

    def filters(self):
        return {
            "pg_conf_lines": pg_conf_lines,
            "pg_conf_parameters": pg_conf_parameters,
            "patroni_parameters": patroni_parameters,
            "patroni_timing_problems": patroni_timing_problems,
            "patroni_config_patch": patroni_config_patch,
            "patroni_member_line": patroni_member_line,
        }
