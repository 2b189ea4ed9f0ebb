"""The preflight's filters (plugins/filter/kit_validate.py): what a spec cannot say.

Each problem names the variable; a secret's value never appears in one."""

import re

import pytest

from ansible_collections.claude_kit.stack.plugins.filter.kit_validate import (
    FilterModule,
    KitInputError,
    kit_address_problems,
    kit_host_kind,
    kit_nginx_seconds,
    kit_pg_memory_problems,
    kit_port_clashes,
    kit_port_problems,
    kit_secret_presence_problems,
    kit_secret_problems,
    kit_size_bytes,
    kit_size_problems,
)


# --- ports -------------------------------------------------------------------

@pytest.mark.parametrize("value", [1, 80, "5432", " 6379 ", 65535, 8432.0])
def test_a_port_in_range_passes(value):
    assert kit_port_problems({"kit_db_port": value}) == []


@pytest.mark.parametrize("value", [0, -1, 65536, 70000, "70000", "http", "", None, True, 80.5, [80]])
def test_a_port_out_of_range_or_not_a_number_is_named(value):
    assert kit_port_problems({"kit_db_port": value}) == [f"kit_db_port={value} is not a TCP port (1-65535)"]


def test_every_bad_port_is_reported_not_only_the_first():
    problems = kit_port_problems({"a_port": 0, "b_port": 80, "c_port": 99999})
    assert [p.split("=")[0] for p in problems] == ["a_port", "c_port"]


def test_two_services_on_one_port_are_named_together():
    clashes = kit_port_clashes({"postgresql_port": 5432, "nginx_listen_port": "5432", "redis_port": 6379})
    assert clashes == ["nginx_listen_port and postgresql_port are both port 5432"]


def test_three_services_on_one_port():
    assert kit_port_clashes({"a": 1, "b": 1, "c": 1}) == ["a and b and c are all port 1"]


def test_distinct_ports_do_not_clash():
    assert kit_port_clashes({"postgresql_port": 5432, "redis_port": 6379, "monitoring_node_exporter_port": 9100}) == []


def test_a_port_that_is_not_a_number_is_left_to_the_range_check():
    assert kit_port_clashes({"a": "http", "b": "http"}) == []


# --- sizes ---------------------------------------------------------------------

@pytest.mark.parametrize("value,kind,expected", [
    ("256mb", "redis", 256 * 1024**2),
    ("1GB", "redis", 1024**3),
    ("1g", "redis", 1000**3),
    ("100k", "redis", 100_000),
    ("4096", "redis", 4096),
    ("256MB", "postgresql", 256 * 1024**2),
    ("4GB", "postgresql", 4 * 1024**3),
    ("64kB", "postgresql", 64 * 1024),
    ("128", "postgresql", 128),
    (128, "postgresql", 128),
    ("10m", "docker", 10 * 1024**2),
    ("1m", "nginx", 1024**2),
    ("0", "nginx", 0),
])
def test_sizes_parse_in_each_programs_units(value, kind, expected):
    assert kit_size_bytes(value, kind) == expected


@pytest.mark.parametrize("value,kind", [
    ("256 megabytes", "redis"),
    ("lots", "redis"),
    ("1.5gb", "redis"),
    # PostgreSQL's units are case-sensitive: mb is refused by the server.
    ("256mb", "postgresql"),
    ("4 GiB", "postgresql"),
    ("10x", "docker"),
    ("1mb", "nginx"),
    (True, "redis"),
    (None, "redis"),
])
def test_a_size_that_does_not_parse_raises_naming_the_value(value, kind):
    with pytest.raises(KitInputError, match="is not"):
        kit_size_bytes(value, kind)


def test_an_unknown_kind_of_size_is_a_programming_error():
    with pytest.raises(KitInputError, match="unknown kind"):
        kit_size_bytes("1m", "vms")


@pytest.mark.parametrize("value", ["-1gb", "0", "0mb", -5])
def test_a_negative_or_zero_memory_limit_is_refused(value):
    assert kit_size_problems({"redis_maxmemory": value}, "redis") == [f"redis_maxmemory={value} must be more than 0"]


def test_a_size_problem_names_the_variable_and_what_was_expected():
    assert kit_size_problems({"redis_maxmemory": "lots"}, "redis") == [
        "redis_maxmemory=lots is not a Redis size such as 256mb or 1gb"]


def test_nginx_accepts_zero_as_no_limit():
    assert kit_size_problems({"nginx_client_max_body_size": "0"}, "nginx") == []


def test_only_postgresql_memory_settings_are_checked():
    settings = {"shared_buffers": "-128MB", "work_mem": "4 gigs", "random_page_cost": "1.1",
                "maintenance_work_mem": "64MB", "wal_buffers": -1, "autovacuum_work_mem": "-1"}
    assert kit_pg_memory_problems(settings, "postgresql_tuning_overrides") == [
        "postgresql_tuning_overrides.shared_buffers=-128MB must be more than 0",
        "postgresql_tuning_overrides.work_mem=4 gigs is not a PostgreSQL memory size such as 256MB or 4GB",
    ]


def test_minus_one_means_derive_it_only_where_postgresql_says_so():
    assert kit_pg_memory_problems({"work_mem": -1}, "postgresql_settings") == [
        "postgresql_settings.work_mem=-1 must be more than 0"]


# --- addresses -----------------------------------------------------------------

@pytest.mark.parametrize("kind,good", [
    ("ip", ["10.0.0.5", "::1", "fe80::1"]),
    ("ipv4", ["172.30.59.10"]),
    ("cidr", ["10.0.0.5/32", "10.0.0.0/8", "fd00::/64", "0.0.0.0/0"]),
    ("hba", ["10.0.0.0/24", "all", "samenet", "samehost"]),
    ("listen", ["*", "localhost", "10.0.0.5", "::", "db1.example.org"]),
    ("bind", ["127.0.0.1", "-::1", "*", "::*", "10.0.0.5"]),
])
def test_good_addresses_pass(kind, good):
    assert kit_address_problems({"var": good}, kind) == []


@pytest.mark.parametrize("kind,bad,why", [
    ("ip", "10.0.0.300", "is not an IP address"),
    ("ip", "db1", "is not an IP address"),
    ("ipv4", "::1", "is not an IPv4 address"),
    ("cidr", "10.0.0.300/32", "is not a CIDR"),
    ("cidr", "10.0.0.0/33", "is not a CIDR"),
    ("cidr", "10.0.0.5", "without its prefix length"),
    ("cidr", "db1.example.org", "is not a CIDR"),
    ("hba", "everyone", "is not a CIDR"),
    ("listen", "10.0.0.300", "is not an IP address, a host name or *"),
    ("listen", "bad_name!", "is not an IP address, a host name or *"),
    ("bind", "localhost", "is not an IP address"),
])
def test_bad_addresses_are_named_with_their_index(kind, bad, why):
    problems = kit_address_problems({"var": ["127.0.0.1/32" if kind in ("cidr", "hba") else "127.0.0.1", bad]}, kind)
    assert len(problems) == 1
    assert problems[0].startswith(f"var[1]={bad} ") and why in problems[0]


def test_a_single_address_is_named_without_an_index():
    assert kit_address_problems({"monitoring_exporter_address": "nowhere"}, "ip") == [
        "monitoring_exporter_address=nowhere is not an IP address"]


@pytest.mark.parametrize("item", [None, "", 42, {"a": 1}])
def test_a_list_element_that_is_no_string_is_named(item):
    assert kit_address_problems({"var": [item]}, "ip")[0].startswith("var[0]=")


def test_an_unknown_kind_of_address_is_a_programming_error():
    with pytest.raises(KitInputError):
        kit_address_problems({"var": "10.0.0.1"}, "mac")


# --- host settings ---------------------------------------------------------------

@pytest.mark.parametrize("value,kind", [
    ("", "empty"),
    (None, "empty"),
    ("10.0.0.5", "ip"),
    ("stack-data", "member"),
    ("stack-app1", "outsider"),
    ("db.example.org", "name"),
    ("stack-dta", "name"),
    ("10.0.0.300", "invalid"),
    ("no such host", "invalid"),
])
def test_host_kinds(value, kind):
    assert kit_host_kind(value, ["stack-data", "stack-app1"], ["stack-data"]) == kind


# --- secrets -----------------------------------------------------------------------

GOOD = "Zq7vN2xK9pLm4Rt8Wb3Yc6Hd"


def test_a_random_secret_passes():
    assert kit_secret_problems({"redis_app_password": GOOD}) == []


@pytest.mark.parametrize("value,why", [
    (None, "is not set"),
    ("", "is empty"),
    (12345, "is not a string"),
    ("Zq7vN2xK9pLm", "is shorter than 16 characters"),
    ("changeme", "is shorter than 16 characters"),
    ("changemechangeme", "looks like a placeholder"),
    ("CHANGE_ME_CHANGE_ME", "looks like a placeholder"),
    ("password12345678", "looks like a placeholder"),
    ("MySecretPassword2024!", "looks like a placeholder"),
    ("<at least 16 random characters>", "looks like a placeholder"),
    ("{{ vault_redis_app_password }}", "looks like a placeholder"),
    ("1234567890123456", "looks like a placeholder"),
    ("aaaaaaaaaaaaaaaaaaaa", "repeats fewer than 6 different characters"),
    ("abcabcabcabcabcabc", "repeats fewer than 6 different characters"),
])
def test_unfit_secrets_are_named_never_shown(value, why):
    problems = kit_secret_problems({"redis_app_password": value})
    assert problems == [problems[0]] and problems[0].startswith("redis_app_password ") and why in problems[0]
    if isinstance(value, str) and value:
        assert value not in problems[0]


def test_each_secret_can_need_its_own_length():
    problems = kit_secret_problems({"backup_pgbackrest_cipher_pass": GOOD, "redis_app_password": GOOD},
                                   min_lengths={"backup_pgbackrest_cipher_pass": 32})
    assert problems == ["backup_pgbackrest_cipher_pass is shorter than 32 characters"]


def test_a_secret_the_lab_generated_is_refused_whatever_its_name(tmp_path):
    lab = tmp_path / "credentials"
    lab.mkdir()
    (lab / "postgresql_app_password").write_text(GOOD + "\n")
    (lab / "other").write_text("Hk4Tz9Qa2Wm7Xp5Lc8Vb3Nr6 salt=abcdefgh\n")
    (lab / "pki").mkdir()
    secrets = {"postgresql_app_password": GOOD, "daemon_db_password": GOOD,
               "redis_app_password": "Hk4Tz9Qa2Wm7Xp5Lc8Vb3Nr6", "redis_admin_password": "Jd8Kf3Lg7Mh2Nj6Pk9Qm4Rn5"}
    problems = kit_secret_problems(secrets, lab_dirs=[str(lab), str(tmp_path / "missing"), str(lab)])
    assert problems == [
        f"postgresql_app_password is a secret the lab generated ({lab}/postgresql_app_password); production needs its own",
        f"daemon_db_password is a secret the lab generated ({lab}/postgresql_app_password); production needs its own",
        f"redis_app_password is a secret the lab generated ({lab}/other); production needs its own",
    ]
    assert not any(GOOD in p for p in problems)


def test_the_labs_rule_asks_only_for_presence_and_length():
    secrets = {"a": None, "b": "", "c": "short", "d": "changemechangeme", "e": "x" * 20}
    assert kit_secret_presence_problems(secrets, min_lengths={"e": 32}) == [
        "a is not set", "b is empty", "c is shorter than 16 characters", "e is shorter than 32 characters"]


def test_the_filters_refuse_input_that_is_no_mapping():
    with pytest.raises(KitInputError, match="mapping"):
        kit_port_problems([80])


def test_every_filter_is_exported():
    assert set(FilterModule().filters()) == {
        "kit_port_problems", "kit_port_clashes", "kit_size_bytes", "kit_size_problems", "kit_pg_memory_problems",
        "kit_address_problems", "kit_host_kind", "kit_secret_presence_problems", "kit_secret_problems",
        "kit_nginx_seconds"}


# --- Nginx times ---------------------------------------------------------------

@pytest.mark.parametrize("value, seconds", [("30s", 30), ("10", 10), (10, 10), ("1m", 60), ("1m30s", 90),
                                            ("500ms", 0.5), ("2h", 7200), (" 5s ", 5), ("1d", 86400)])
def test_an_nginx_time_is_read_in_seconds(value, seconds):
    assert kit_nginx_seconds(value) == seconds


@pytest.mark.parametrize("value", ["", "s", "30x", "1.5s", "-3s", "30s ago", "m1", None])
def test_a_value_that_is_not_an_nginx_time_is_refused_by_name(value):
    with pytest.raises(KitInputError, match=re.escape(repr(value)) + " is not an Nginx time"):
        kit_nginx_seconds(value)
