"""Filters of the firewall role (roles/firewall): who may reach a guarded port.

Pure functions, no I/O; unit-tested in tests/unit/test_firewall_filter.py.

    {{ groups['app'] | firewall_addresses(hostvars) }}          the hosts' primary IPv4 addresses
    {{ guards | firewall_problems(hostvars, extra, known, ssh) }} what is wrong with the input, one sentence each
    {{ guards | firewall_rules(hostvars, extra) }}              [{name, port, ipv4, ipv6}] for the nft template

A guard is {name, port, hosts, sources}: TCP `port` on this host is reachable
only from loopback, the primary IPv4 address of each inventory host in `hosts`,
and `sources` (addresses or CIDR networks, IPv4 or IPv6). `extra` maps a
guard's name to further sources (firewall_extra_sources).
"""

from __future__ import annotations

import ipaddress
import re

from ansible.errors import AnsibleFilterError

# A guard's name becomes the name of nftables sets: keep it plain.
NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


def _host_address(hostvars, host):
    facts = hostvars.get(host) if hasattr(hostvars, "get") else None
    default = facts.get("ansible_default_ipv4") if hasattr(facts, "get") else None
    address = default.get("address") if hasattr(default, "get") else None
    return str(address) if address else None


def _missing_message(missing):
    return (f"no gathered primary IPv4 address (ansible_default_ipv4) for {', '.join(missing)}: gather their facts "
            "in the same run (no --limit that leaves them out, or a fact cache) or list their addresses in "
            "firewall_extra_sources")


def firewall_addresses(hosts, hostvars):
    """The primary IPv4 address (ansible_default_ipv4.address) of each host, in order, once each.

    A host without one is an error naming it: left out silently, it would be
    refused by the firewall it needs to pass."""
    addresses, missing = [], []
    for host in hosts or []:
        address = _host_address(hostvars, host)
        if address is None:
            missing.append(str(host))
        elif address not in addresses:
            addresses.append(address)
    if missing:
        raise AnsibleFilterError(_missing_message(missing))
    return addresses


def _network(value):
    """An address or network as ipaddress's network; ValueError with the reason when it is neither."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("not an address or network")
    return ipaddress.ip_network(value.strip(), strict=True)


def _list_problems(where, values, what):
    return [] if isinstance(values, (list, tuple)) else [f"{where} must be a list of {what}"]


def _source_problems(where, sources):
    problems = _list_problems(where, sources, "addresses or CIDR networks")
    for source in sources if not problems else []:
        try:
            _network(source)
        except ValueError as err:
            problems.append(f"{where}: {source!r} is not an IPv4/IPv6 address or CIDR network ({err})")
    return problems


def _host_problems(where, hosts, hostvars):
    problems = _list_problems(where, hosts, "inventory host names")
    missing = [str(h) for h in hosts if _host_address(hostvars, h) is None] if not problems else []
    return problems + ([f"{where}: {_missing_message(missing)}"] if missing else [])


def _port(value):
    try:
        port = int(value)
    except (TypeError, ValueError):
        return None
    return port if 1 <= port <= 65535 else None


def _guard_problems(guard, hostvars, reserved_ports):
    if not hasattr(guard, "get"):
        return [f"{guard!r} is not a mapping with name, port, hosts and sources"], None, None
    name, port = guard.get("name"), _port(guard.get("port"))
    where = f"guard {name!r}"
    problems = [] if isinstance(name, str) and NAME.match(name) else [
        f"{where}: the name must be lower-case letters, digits and _, starting with a letter (at most 32)"]
    if port is None:
        problems.append(f"{where}: port {guard.get('port')!r} is not a TCP port (1-65535)")
    elif port in reserved_ports:
        problems.append(f"{where}: port {port} is the SSH/connection port, which the kit never filters")
    problems += _host_problems(f"{where} hosts", guard.get("hosts", []), hostvars)
    problems += _source_problems(f"{where} sources", guard.get("sources", []))
    return problems, name, port


def firewall_problems(guards, hostvars, extra_sources=None, known_names=(), reserved_ports=(22,)):
    """Every problem of the input as a sentence; an empty list when it is good.

    `known_names` are the guards any host may have (a key of `extra_sources`
    naming none of them is a typo); `reserved_ports` are never guarded."""
    reserved = {int(p) for p in reserved_ports}
    problems, seen_ports, seen_names = [], {}, set()
    for guard in guards or []:
        found, name, port = _guard_problems(guard, hostvars, reserved)
        problems += found
        if name in seen_names:
            problems.append(f"guard {name!r} is listed twice")
        seen_names.add(name)
        if port is not None and port in seen_ports:
            # The first guard's drop would refuse the second's sources.
            problems.append(f"guards {seen_ports[port]!r} and {name!r} both guard port {port}")
        seen_ports.setdefault(port, name)
    extra_sources = {} if extra_sources is None else extra_sources
    if not hasattr(extra_sources, "items"):
        return problems + ["firewall_extra_sources must map a guard's name to a list of sources"]
    for name, sources in extra_sources.items():
        if name not in set(known_names) | seen_names:
            known = ", ".join(sorted(known_names))
            problems.append(f"firewall_extra_sources: {name!r} names no guard (known: {known})")
        problems += _source_problems(f"firewall_extra_sources[{name!r}]", sources)
    return problems


def _collapsed(networks, version):
    """The networks of one IP version, sorted, each once, without those inside another
    (nftables refuses overlapping intervals in a set), in nft's notation: a single
    address without its prefix. Neighbours stay apart, so each host is seen in the file."""
    unique = sorted({n for n in networks if n.version == version})
    kept = [n for n in unique if not any(n != other and n.subnet_of(other) for other in unique)]
    return [str(n.network_address) if n.num_addresses == 1 else str(n) for n in kept]


def firewall_rules(guards, hostvars, extra_sources=None):
    """The guards as the template renders them: [{name, port, ipv4, ipv6, published}], each
    guard's hosts' addresses, sources and extra sources, parsed, deduplicated and merged."""
    extra_sources = extra_sources or {}
    rules = []
    for guard in guards or []:
        sources = (firewall_addresses(guard.get("hosts") or [], hostvars) + list(guard.get("sources") or [])
                   + list(extra_sources.get(guard["name"]) or []))
        try:
            networks = [_network(s) for s in sources]
        except ValueError as err:
            raise AnsibleFilterError(f"firewall guard {guard['name']!r}: bad source in {sources}: {err}") from err
        rules.append({"name": guard["name"], "port": int(guard["port"]),
                      "ipv4": _collapsed(networks, 4), "ipv6": _collapsed(networks, 6),
                      "published": bool(guard.get("published", False))})
    return rules


class FilterModule:
    """Firewall role filters."""

    def filters(self):
        return {"firewall_addresses": firewall_addresses, "firewall_problems": firewall_problems,
                "firewall_rules": firewall_rules}
