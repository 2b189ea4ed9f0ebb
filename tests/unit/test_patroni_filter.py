"""The filters that turn the postgresql role's settings into Patroni's configuration."""

import pytest

from ansible_collections.claude_kit.stack.plugins.filter.patroni import (
    patroni_config_patch,
    patroni_parameters,
    patroni_timing_problems,
    pg_conf_lines,
    pg_conf_parameters,
)


def test_conf_lines_drop_comments_and_blank_lines_and_collapse_spaces():
    text = "# header\n\nlocal   all   postgres   peer\n  # indented comment\nhostssl db  app  10.0.0.1/32   scram-sha-256\n"
    assert pg_conf_lines(text) == ["local all postgres peer", "hostssl db app 10.0.0.1/32 scram-sha-256"]


def test_conf_parameters_unquote_values_and_keep_numbers_as_text():
    text = "# c\nssl = on\nssl_ciphers = 'ECDHE+AESGCM:!aNULL'\nlog_file_mode = 0600\nlog_line_prefix = '%m [%p] it''s '\n"
    assert pg_conf_parameters(text) == {
        "ssl": "on",
        "ssl_ciphers": "ECDHE+AESGCM:!aNULL",
        "log_file_mode": "0600",
        "log_line_prefix": "%m [%p] it's ",
    }


def test_conf_parameters_refuse_a_line_that_is_not_a_setting():
    with pytest.raises(ValueError, match="line 2 is not 'name = value'"):
        pg_conf_parameters("ssl = on\ninclude_dir 'conf.d'\n")


def test_parameters_split_into_shared_local_and_patronis_own():
    split = patroni_parameters({
        "max_connections": 100, "shared_buffers": "256MB", "max_worker_processes": "8",
        "shared_preload_libraries": ["pg_stat_statements", "pgaudit"], "port": 5433, "Wal_Level": "replica",
    })
    assert split == {
        "dcs": {"max_connections": "100", "max_worker_processes": "8", "Wal_Level": "replica"},
        "local": {"shared_buffers": "256MB", "shared_preload_libraries": "pg_stat_statements,pgaudit"},
        "refused": ["port"],
    }


@pytest.mark.parametrize(
    "ttl,loop_wait,retry,problems",
    [
        (30, 10, 10, []),
        (20, 10, 5, []),
        (30, 10, 15, ["10 + 2 * 15 = 40 > 30"]),
        (10, 1, 3, ["postgresql_patroni_ttl is 10; Patroni's minimum is 20"]),
        (30, 0, 3, ["postgresql_patroni_loop_wait is 0; Patroni's minimum is 1"]),
        ("thirty", 10, 10, ["postgresql_patroni_ttl must be a whole number of seconds, not 'thirty'"]),
        (30, True, 10, ["postgresql_patroni_loop_wait must be a whole number of seconds, not True"]),
    ],
)
def test_timing_rule_and_minimums(ttl, loop_wait, retry, problems):
    found = patroni_timing_problems(ttl, loop_wait, retry)
    assert len(found) == len(problems), found
    for needle, message in zip(problems, found):
        assert needle in message


CURRENT = {
    "ttl": 30, "loop_wait": 10, "retry_timeout": 10, "synchronous_mode": True,
    "postgresql": {"use_pg_rewind": True, "parameters": {"max_connections": "100", "max_locks_per_transaction": 64,
                                                         "wal_level": "replica"}},
    "claude_kit_parameters": ["max_connections", "max_wal_senders", "wal_level"],
}
WANTED = {"ttl": 30, "loop_wait": 10, "retry_timeout": 10, "synchronous_mode": "on",
          "postgresql": {"use_pg_rewind": True}}


def test_patch_is_empty_when_everything_is_as_declared():
    params = {"max_connections": "100", "wal_level": "replica"}
    current = dict(CURRENT, claude_kit_parameters=["max_connections", "wal_level"])
    assert patroni_config_patch(current, WANTED, params) == {}


def test_patch_changes_what_differs_and_takes_back_only_what_the_kit_had_set():
    params = {"max_connections": 120, "wal_level": "replica"}
    patch = patroni_config_patch(CURRENT, dict(WANTED, ttl=40), params)
    assert patch == {
        "ttl": 40,
        # max_wal_senders was the kit's and is no longer declared, but is not in the DCS: nothing to take back.
        # max_locks_per_transaction was set by someone else: left alone.
        "postgresql": {"parameters": {"max_connections": "120"}},
        "claude_kit_parameters": ["max_connections", "wal_level"],
    }
    current = dict(CURRENT)
    current["postgresql"] = dict(CURRENT["postgresql"], parameters=dict(CURRENT["postgresql"]["parameters"],
                                                                        max_wal_senders="10"))
    patch = patroni_config_patch(current, WANTED, {"max_connections": "100"})
    assert patch["postgresql"]["parameters"] == {"max_wal_senders": None, "wal_level": None}


def test_patch_on_a_fresh_cluster_sets_everything():
    patch = patroni_config_patch({}, WANTED, {"max_connections": "100"})
    assert patch["ttl"] == 30 and patch["synchronous_mode"] == "on"
    assert patch["postgresql"] == {"use_pg_rewind": True, "parameters": {"max_connections": "100"}}
    assert patch["claude_kit_parameters"] == ["max_connections"]


def test_member_line():
    from ansible_collections.claude_kit.stack.plugins.filter.patroni import patroni_member_line

    assert patroni_member_line({"name": "db1", "role": "leader", "state": "running", "timeline": 2}) == \
        "db1 / leader / running / 2 / -"
    assert patroni_member_line({"name": "db2", "role": "sync_standby", "state": "streaming", "timeline": 2,
                                "lag": 0}) == "db2 / sync_standby / streaming / 2 / 0"
