"""The firewall role's filters (plugins/filter/firewall.py): whose address is
admitted, what input is refused before any change, and what the nftables
template is given (overlaps merged: nft refuses overlapping intervals)."""

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.claude_kit.stack.plugins.filter.firewall import (
    firewall_addresses,
    firewall_problems,
    firewall_rules,
)

HOSTVARS = {
    "app1": {"ansible_default_ipv4": {"address": "10.0.0.11"}},
    "app2": {"ansible_default_ipv4": {"address": "10.0.0.12"}},
    "both": {"ansible_default_ipv4": {"address": "10.0.0.11"}},
    "nofacts": {"inventory_hostname": "nofacts"},
    "noroute": {"ansible_default_ipv4": {}},
}
KNOWN = ["postgresql", "redis", "pgbackrest"]


def guard(name="postgresql", port=5432, sources=("10.0.0.11",), hosts=()):
    return {"name": name, "port": port, "hosts": list(hosts), "sources": list(sources)}


def test_addresses_in_order_once_each():
    assert firewall_addresses(["app1", "app2", "both"], HOSTVARS) == ["10.0.0.11", "10.0.0.12"]
    assert firewall_addresses([], HOSTVARS) == []


def test_a_host_without_an_address_is_named_never_left_out():
    with pytest.raises(AnsibleFilterError, match="nofacts, noroute"):
        firewall_addresses(["app1", "nofacts", "noroute"], HOSTVARS)


def test_good_input_has_no_problem():
    guards = [guard(hosts=["app1", "app2"]), guard("redis", "6379", ["10.0.0.0/24", "2001:db8::1"])]
    assert firewall_problems(guards, HOSTVARS, {"postgresql": ["192.168.1.0/24"]}, KNOWN, [22]) == []


@pytest.mark.parametrize(
    "guards,extra,needle",
    [
        ([guard(sources=["10.0.0.300"])], {}, "'10.0.0.300' is not an IPv4/IPv6 address"),
        ([guard(sources=["10.0.0.5/24"])], {}, "has host bits set"),
        ([guard(sources=[""])], {}, "is not an IPv4/IPv6 address"),
        ([{"name": "postgresql", "port": 5432, "sources": "10.0.0.1"}], {}, "must be a list"),
        ([guard(port=0)], {}, "port 0 is not a TCP port"),
        ([guard(port=70000)], {}, "port 70000 is not a TCP port"),
        ([guard(port="pg")], {}, "port 'pg' is not a TCP port"),
        ([guard(port=22)], {}, "SSH/connection port"),
        ([guard(), guard("other", 5432)], {}, "both guard port 5432"),
        ([guard(), guard()], {}, "listed twice"),
        ([guard(name="Bad-Name")], {}, "the name must be"),
        ([guard()], {"postgres": ["10.0.0.1"]}, "'postgres' names no guard"),
        ([guard()], {"redis": ["nonsense"]}, "firewall_extra_sources['redis']: 'nonsense'"),
        ([guard()], ["10.0.0.1"], "must map a guard's name"),
        ([guard(hosts=["app1", "nofacts"])], {}, "guard 'postgresql' hosts: no gathered primary IPv4 address"),
        ([{"name": "redis", "port": 6379, "hosts": "app1"}], {}, "must be a list of inventory host names"),
    ],
)
def test_bad_input_is_named(guards, extra, needle):
    problems = firewall_problems(guards, HOSTVARS, extra, KNOWN, [22])
    assert any(needle in p for p in problems), problems


def test_the_connection_port_is_reserved_too():
    problems = firewall_problems([guard(port=2222)], HOSTVARS, {}, KNOWN, [22, 2222])
    assert any("SSH/connection port" in p for p in problems)


def test_rules_merge_hosts_sources_and_extra_sources_per_family():
    guards = [guard(sources=["10.0.0.11", "10.0.0.12"], hosts=["app1"]), guard("redis", "6379", [])]
    extra = {"postgresql": ["10.0.0.0/24", "2001:db8::/64", "2001:db8::5"], "pgbackrest": ["10.9.9.9"]}
    assert firewall_rules(guards, HOSTVARS, extra) == [
        # The /24 holds both addresses: one interval, as nft wants it.
        {"name": "postgresql", "port": 5432, "ipv4": ["10.0.0.0/24"], "ipv6": ["2001:db8::/64"], "published": False},
        {"name": "redis", "port": 6379, "ipv4": [], "ipv6": [], "published": False},
    ]


def test_a_port_docker_publishes_is_marked_for_the_prerouting_chain():
    rules = firewall_rules([guard("daemon", 5001, sources=[], hosts=["app1"]) | {"published": True}], HOSTVARS)
    assert rules[0]["published"] is True and rules[0]["ipv4"] == ["10.0.0.11"]


def test_rules_write_single_addresses_without_prefix_and_sorted():
    rules = firewall_rules([guard(sources=["10.0.0.12", "10.0.0.11/32", "::1"])], HOSTVARS)
    assert rules[0]["ipv4"] == ["10.0.0.11", "10.0.0.12"]
    assert rules[0]["ipv6"] == ["::1"]


def test_rules_refuse_a_bad_source_even_without_validation():
    with pytest.raises(AnsibleFilterError, match="postgresql"):
        firewall_rules([guard(sources=["not-an-address"])], HOSTVARS)


def test_neighbouring_addresses_stay_apart_so_each_host_shows():
    rules = firewall_rules([guard(sources=["10.0.0.12"], hosts=["app1", "both"])], HOSTVARS)
    assert rules[0]["ipv4"] == ["10.0.0.11", "10.0.0.12"]
