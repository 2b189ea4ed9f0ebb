"""Filters of the preflight checks (playbooks/preflight.yml, roles/*/tasks/validate.yml).

What an argument spec cannot say: that a port is in range and no two services
of a host share one, that a size parses and is positive, that an address or a
CIDR parses, that a secret is fit for production. Each filter takes the values
by their variable names and returns a list of problems, each naming the
variable (never a secret's value); an empty list means the input is good.
Unit-tested in tests/unit/test_kit_validate_filter.py.

    {{ {'postgresql_port': postgresql_port} | kit_port_problems }}
    {{ {'postgresql_port': 5432, 'nginx_listen_port': 5432} | kit_port_clashes }}
    {{ {'redis_maxmemory': redis_maxmemory} | kit_size_problems('redis') }}
    {{ postgresql_tuning_overrides | kit_pg_memory_problems('postgresql_tuning_overrides') }}
    {{ {'postgresql_app_client_addresses': [...]} | kit_address_problems('cidr') }}
    {{ daemon_db_host | kit_host_kind(groups['all'], groups['database']) }}
    {{ {'redis_app_password': redis_app_password} | kit_secret_problems(16, lab_dirs) }}
    {{ {'redis_app_password': redis_app_password} | kit_secret_presence_problems(16) }}

All are pure functions except kit_secret_problems, which reads the files of
the directories it is given (on the controller, where filters run) to compare
them with the secrets; it returns only names, never content.
"""

from __future__ import annotations

import ipaddress
import os
import re

PORT_MIN, PORT_MAX = 1, 65535

# Units each program accepts in a size, and their factor in bytes.
# Redis (redis.conf): case-insensitive, k = 1000 and kb = 1024.
REDIS_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2, "g": 1000**3, "gb": 1024**3}
# PostgreSQL memory settings: case-sensitive units; a bare number is in the
# setting's own unit (kB or 8kB blocks), which only has to be positive here.
POSTGRESQL_UNITS = {"": 1, "B": 1, "kB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}
# Docker's log max-size and Nginx's sizes: k, m, g, either case.
DOCKER_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "m": 1024**2, "mb": 1024**2, "g": 1024**3, "gb": 1024**3}
NGINX_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
SIZE_KINDS = {
    "redis": (REDIS_UNITS, True, "a Redis size such as 256mb or 1gb"),
    "postgresql": (POSTGRESQL_UNITS, False, "a PostgreSQL memory size such as 256MB or 4GB"),
    "docker": (DOCKER_UNITS, True, "a size such as 10m or 1g"),
    "nginx": (NGINX_UNITS, True, "an Nginx size such as 1m or 512k"),
}
# Nginx's client_max_body_size 0 means "no limit": the one size where 0 is meaningful.
ZERO_ALLOWED = {"nginx"}

# PostgreSQL settings whose value is an amount of memory, and those where -1
# means "derive it" (wal_buffers from shared_buffers, autovacuum_work_mem from
# maintenance_work_mem).
PG_MEMORY_SETTINGS = {
    "shared_buffers", "effective_cache_size", "work_mem", "maintenance_work_mem", "temp_buffers",
    "wal_buffers", "autovacuum_work_mem", "logical_decoding_work_mem", "min_wal_size", "max_wal_size",
}
PG_MINUS_ONE_ALLOWED = {"wal_buffers", "autovacuum_work_mem"}

# A host name (RFC 1123 labels); an all-numeric dotted string is an address, not a name.
HOST_NAME_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")
NUMERIC_DOTTED_RE = re.compile(r"^[0-9.]+$")

# Words a made-up secret is built from ("changeme", "MySecretPassword1", "<your password here>").
PLACEHOLDER_WORDS = frozenset("""
    change changeme me my your yours our here there the an it this that is of with at least to
    password passwd pass passphrase pwd secret secrets key token cipher
    example sample demo default defaults test testing tests dummy fake placeholder insecure unsafe
    todo fixme tbd replace replaceme set setme fill fillme put enter insert new random characters chars
    letmein qwerty admin root user app application db database postgres postgresql redis backup
    monitor monitoring claude kit lab stack prod production staging dev development vault value
""".split())
# A secret repeating fewer distinct characters than this is not random
# ("aaaaaaaaaaaaaaaa", "abababababababab"). Random 16 characters drawn from
# even the 16 hex digits have fewer than 6 distinct ones about once in 10^8.
MIN_DISTINCT_CHARACTERS = 6


class KitInputError(ValueError):
    """Raised with a message that names the offending input."""


def _integer(value):
    """An int from an int or a string of digits (Jinja and -e hand either); None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?[0-9]+\s*", value):
        return int(value)
    return None


def kit_port_problems(ports):
    """Every entry of {variable: port} that is not a TCP port 1-65535."""
    problems = []
    for name, value in _items(ports, "kit_port_problems"):
        number = _integer(value)
        if number is None or not PORT_MIN <= number <= PORT_MAX:
            problems.append(f"{name}={value} is not a TCP port ({PORT_MIN}-{PORT_MAX})")
    return problems


def kit_port_clashes(ports):
    """Pairs of {variable: port} on one host that name the same port (each clash once)."""
    by_port = {}
    for name, value in _items(ports, "kit_port_clashes"):
        number = _integer(value)
        if number is not None:
            by_port.setdefault(number, []).append(name)
    return [f"{' and '.join(sorted(names))} are all port {port}" if len(names) > 2
            else f"{' and '.join(sorted(names))} are both port {port}"
            for port, names in sorted(by_port.items()) if len(names) > 1]


def kit_size_bytes(value, kind):
    """The size in bytes (PostgreSQL's bare numbers: in the setting's unit). Raises KitInputError."""
    if kind not in SIZE_KINDS:
        raise KitInputError(f"kit_size_bytes: unknown kind {kind!r} (known: {', '.join(sorted(SIZE_KINDS))})")
    units, ignore_case, what = SIZE_KINDS[kind]
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise KitInputError(f"{value!r} is not {what}")
    match = re.fullmatch(r"\s*(-?[0-9]+)\s*([A-Za-z]*)\s*", str(value))
    unit = match.group(2) if match else None
    if unit is not None and ignore_case:
        unit = unit.lower()
    if match is None or unit not in units:
        raise KitInputError(f"{value} is not {what}")
    return int(match.group(1)) * units[unit]


def kit_size_problems(sizes, kind):
    """Every entry of {variable: size} that does not parse as `kind`'s size or is not positive."""
    problems = []
    for name, value in _items(sizes, "kit_size_problems"):
        try:
            number = kit_size_bytes(value, kind)
        except KitInputError as err:
            problems.append(f"{name}={err}")
            continue
        if number < 0 or (number == 0 and kind not in ZERO_ALLOWED):
            problems.append(f"{name}={value} must be more than 0")
    return problems


def kit_pg_memory_problems(settings, name):
    """The memory settings of a PostgreSQL settings dict (others are left to PostgreSQL) that
    do not parse or are not positive; `name` is the variable the dict is, for the message."""
    if not isinstance(settings, dict):
        raise KitInputError(f"kit_pg_memory_problems: {name} must be a mapping")
    problems = []
    for key, value in settings.items():
        if key not in PG_MEMORY_SETTINGS:
            continue
        if key in PG_MINUS_ONE_ALLOWED and _integer(value) == -1:
            continue
        problems.extend(kit_size_problems({f"{name}.{key}": value}, "postgresql"))
    return problems


def _ip(text):
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _cidr(text):
    """A network written address/prefix; None without the prefix or when it does not parse."""
    if "/" not in text:
        return None
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def _address_problem(text, kind):
    """None when `text` is a good address of `kind`, else what it should have been."""
    if kind == "ip":
        return None if _ip(text) else "is not an IP address"
    if kind == "ipv4":
        return None if isinstance(_ip(text), ipaddress.IPv4Address) else "is not an IPv4 address"
    if kind == "cidr":
        if _cidr(text):
            return None
        return ("is an address without its prefix length (e.g. /32 for one IPv4 host)" if _ip(text)
                else "is not a CIDR (address/prefix, e.g. 10.0.0.5/32)")
    if kind == "hba":
        # pg_hba.conf's address column: a CIDR or one of PostgreSQL's keywords.
        if text in ("all", "samehost", "samenet"):
            return None
        return _address_problem(text, "cidr")
    if kind == "listen":
        # listen_addresses: *, addresses, or host names the server resolves.
        if text in ("*", "localhost") or _ip(text):
            return None
        if NUMERIC_DOTTED_RE.match(text) or not HOST_NAME_RE.match(text):
            return "is not an IP address, a host name or *"
        return None
    if kind == "bind":
        # Redis's bind: addresses, * (every IPv4 address), ::* (every IPv6 one); a leading - makes one optional.
        bare = text[1:] if text.startswith("-") else text
        return None if bare in ("*", "::*") or _ip(bare) else "is not an IP address (or *)"
    raise KitInputError(f"kit_address_problems: unknown kind {kind!r}")


def kit_address_problems(values, kind):
    """Every address of {variable: address or list of them} that is not a good `kind`:
    ip, ipv4, cidr (address/prefix), hba (a CIDR or all/samehost/samenet), listen
    (PostgreSQL's listen_addresses) or bind (Redis's bind)."""
    problems = []
    for name, value in _items(values, "kit_address_problems"):
        entries = [(name, value)] if not isinstance(value, (list, tuple)) else [
            (f"{name}[{index}]", item) for index, item in enumerate(value)]
        for label, item in entries:
            if not isinstance(item, str) or not item.strip():
                problems.append(f"{label}={item!r} is not an address")
                continue
            problem = _address_problem(item.strip(), kind)
            if problem:
                problems.append(f"{label}={item} {problem}")
    return problems


def kit_host_kind(value, inventory_hosts, group_hosts):
    """What a host setting such as daemon_db_host names: 'empty', 'ip', 'member' (a host of the
    group it should be in), 'outsider' (an inventory host outside that group), 'name' (any other
    host name, to be resolved) or 'invalid'."""
    text = "" if value is None else str(value).strip()
    if not text:
        return "empty"
    if _ip(text):
        return "ip"
    if text in list(group_hosts or []):
        return "member"
    if text in list(inventory_hosts or []):
        return "outsider"
    if NUMERIC_DOTTED_RE.match(text) or not HOST_NAME_RE.match(text):
        return "invalid"
    return "name"


def _is_placeholder(secret):
    """A made-up value: a template left in, or nothing but placeholder words, digits and punctuation."""
    if "<" in secret and ">" in secret or "{{" in secret or "}}" in secret:
        return True
    letters = re.sub(r"[^a-z]", "", secret.lower())
    if not letters:
        return True
    # Can the letters be cut entirely into placeholder words? (word break, dynamic programming)
    reachable = [True] + [False] * len(letters)
    longest = max(len(word) for word in PLACEHOLDER_WORDS)
    for end in range(1, len(letters) + 1):
        reachable[end] = any(reachable[start] and letters[start:end] in PLACEHOLDER_WORDS
                             for start in range(max(0, end - longest), end))
    return reachable[-1]


def _lab_secrets(lab_dirs):
    """{secret: 'dir/file'} of every file directly in the given directories (the password
    lookup's files: the secret, then optionally ' salt=...')."""
    found = {}
    seen = set()
    for directory in lab_dirs or []:
        real = os.path.realpath(str(directory))
        if real in seen or not os.path.isdir(real):
            continue
        seen.add(real)
        for entry in sorted(os.listdir(real)):
            path = os.path.join(real, entry)
            if not os.path.isfile(path):
                continue
            try:
                with open(path, encoding="utf-8", errors="replace") as handle:
                    words = handle.read().split()
            except OSError:
                continue
            if words:
                found.setdefault(words[0], os.path.join(str(directory), entry))
    return found


def _presence_problem(name, value, need):
    if value is None:
        return f"{name} is not set"
    if not isinstance(value, str):
        return f"{name} is not a string"
    if not value:
        return f"{name} is empty"
    if len(value) < need:
        return f"{name} is shorter than {need} characters"
    return None


def kit_secret_presence_problems(secrets, min_length=16, min_lengths=None):
    """The lab's rule: every secret of {variable: value} is set and at least min_length (or its
    own in min_lengths) characters long. The messages name the variable only."""
    problems = []
    for name, value in _items(secrets, "kit_secret_presence_problems"):
        problem = _presence_problem(name, value, int((min_lengths or {}).get(name, min_length)))
        if problem:
            problems.append(problem)
    return problems


def kit_secret_problems(secrets, min_length=16, lab_dirs=None, min_lengths=None):
    """Production's rule: every secret of {variable: value} is set, at least min_length (or its
    own in min_lengths) characters long, not a placeholder, not too repetitive, and not equal to
    a secret the lab generated (a file in one of lab_dirs). The messages name the variable only."""
    lab = _lab_secrets(lab_dirs)
    problems = []
    for name, value in _items(secrets, "kit_secret_problems"):
        presence = _presence_problem(name, value, int((min_lengths or {}).get(name, min_length)))
        if presence:
            problems.append(presence)
        elif _is_placeholder(value):
            problems.append(f"{name} looks like a placeholder, not a generated secret")
        elif len(set(value)) < MIN_DISTINCT_CHARACTERS:
            problems.append(f"{name} repeats fewer than {MIN_DISTINCT_CHARACTERS} different characters")
        elif value in lab:
            problems.append(f"{name} is a secret the lab generated ({lab[value]}); production needs its own")
    return problems


def _items(mapping, caller):
    if not isinstance(mapping, dict):
        raise KitInputError(f"{caller}: expects a mapping of variable names to values, got {type(mapping).__name__}")
    return list(mapping.items())


NGINX_TIME_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "M": 2592000, "y": 31536000}
NGINX_TIME_RE = re.compile(r"([0-9]+)(ms|s|m|h|d|w|M|y)?")


def kit_nginx_seconds(value):
    """Seconds in an Nginx time ("30s", "1m30s", "500ms", "10": seconds), as a float; an
    error naming the value when it is not one."""
    text = str(value).strip()
    position, total = 0, 0.0
    for match in NGINX_TIME_RE.finditer(text):
        if match.start() != position:
            break
        total += int(match.group(1)) * NGINX_TIME_UNITS[match.group(2) or "s"]
        position = match.end()
    if not text or position != len(text):
        raise KitInputError(f"kit_nginx_seconds: {value!r} is not an Nginx time such as 10s or 1m")
    return total


class FilterModule:
    """Ansible filter plugin entry point."""

    def filters(self):
        return {
            "kit_port_problems": kit_port_problems,
            "kit_port_clashes": kit_port_clashes,
            "kit_size_bytes": kit_size_bytes,
            "kit_nginx_seconds": kit_nginx_seconds,
            "kit_size_problems": kit_size_problems,
            "kit_pg_memory_problems": kit_pg_memory_problems,
            "kit_address_problems": kit_address_problems,
            "kit_host_kind": kit_host_kind,
            "kit_secret_presence_problems": kit_secret_presence_problems,
            "kit_secret_problems": kit_secret_problems,
        }
