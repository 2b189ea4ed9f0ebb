"""The Redis cache under the kit's ACL: hits, invalidation, outages."""

import time

import pytest
import redis

from claude_daemon.cache import RETRY_AFTER, Cache

from .daemon_helpers import REDIS_PASSWORD, REDIS_USER, free_port, wait_for


def test_the_acl_is_as_tight_as_the_kit_makes_it(redis_server):
    """The fixture's user can do exactly what the daemon needs; so every other test
    proves the daemon uses nothing else."""
    client = redis.Redis.from_url(redis_server.url)
    assert client.ping() and client.set("claude:t", 1) and client.execute_command("INCR", "claude:t") == 2
    assert client.expire("claude:t", 5) and client.exists("claude:t") == 1 and client.unlink("claude:t") == 1
    for forbidden in (lambda: client.keys("*"), lambda: client.scan(), lambda: client.flushall(),
                      lambda: client.info(), lambda: client.execute_command("SELECT", 1),
                      lambda: client.set("other:key", 1), lambda: client.mget("claude:a", "claude:b"),
                      lambda: client.incr("claude:t"),  # redis-py sends INCRBY
                      lambda: client.execute_command("CONFIG", "GET", "*")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            forbidden()


def test_miss_then_hit_then_invalidated(redis_clean):
    cache = Cache(redis_clean.url, ttl=30)
    loads = []

    def loader():
        loads.append(1)
        return {"rows": [len(loads)]}

    assert cache.get_or_load("alerts", ["q"], loader) == ({"rows": [1]}, "MISS")
    assert cache.get_or_load("alerts", ["q"], loader) == ({"rows": [1]}, "HIT")
    assert cache.get_or_load("alerts", ["other"], loader) == ({"rows": [2]}, "MISS")
    cache.invalidate("usage_data")  # another table: alerts stay cached
    assert cache.get_or_load("alerts", ["q"], loader)[1] == "HIT"
    cache.invalidate("alerts")
    assert cache.get_or_load("alerts", ["q"], loader) == ({"rows": [3]}, "MISS")
    keys = redis_clean.admin.keys("*")
    assert keys and all(k.startswith(b"claude:") for k in keys)
    for key in keys:
        if b":q:" in key:
            assert 0 < redis_clean.admin.ttl(key) <= 30
    assert cache.status() == "ok"


def test_invalidation_is_shared_between_daemons(redis_clean):
    a, b = Cache(redis_clean.url, ttl=30), Cache(redis_clean.url, ttl=30)
    assert a.get_or_load("alerts", ["q"], lambda: 1) == (1, "MISS")
    assert b.get_or_load("alerts", ["q"], lambda: 2) == (1, "HIT")
    b.invalidate("alerts")
    assert a.get_or_load("alerts", ["q"], lambda: 3) == (3, "MISS")


def test_a_frozen_redis_is_bypassed_quickly_and_invalidations_catch_up(redis_clean):
    cache = Cache(redis_clean.url, ttl=30)
    assert cache.get_or_load("alerts", ["q"], lambda: "old") == ("old", "MISS")
    redis_clean.freeze()  # accepts connections, answers nothing: the timeout path
    try:
        started = time.monotonic()
        assert cache.get_or_load("alerts", ["q"], lambda: "fresh") == ("fresh", "BYPASS")
        assert time.monotonic() - started < 1.0
        assert cache.status() == "down"
        cache.invalidate("alerts")  # a write while Redis is away
        assert cache.get_or_load("alerts", ["q"], lambda: "fresh") == ("fresh", "BYPASS")
    finally:
        redis_clean.thaw()
    time.sleep(RETRY_AFTER + 0.05)
    assert cache.status() == "ok"
    # The pending invalidation is applied before anything is read: no stale "old".
    assert cache.get_or_load("alerts", ["q"], lambda: "new") == ("new", "MISS")
    assert cache.get_or_load("alerts", ["q"], lambda: "x") == ("new", "HIT")


def test_connections_closed_by_a_redis_restart_are_reopened_not_reported_down(redis_clean):
    """Redis restarted (here: the daemon's connections killed server-side, as a restart
    does): the next request reconnects instead of bypassing, and /health stays "ok"."""
    cache = Cache(redis_clean.url, ttl=30)
    assert cache.status() == "ok"
    assert cache.get_or_load("alerts", ["q"], lambda: 1) == (1, "MISS")
    assert redis_clean.admin.execute_command("CLIENT", "KILL", "USER", REDIS_USER) >= 1
    assert cache.status() == "ok"
    assert cache.get_or_load("alerts", ["q"], lambda: 2) == (1, "HIT")
    redis_clean.admin.execute_command("CLIENT", "KILL", "USER", REDIS_USER)
    assert cache.get_or_load("alerts", ["q"], lambda: 3) == (1, "HIT")


def test_no_redis_listening_is_down_not_an_error():
    cache = Cache(f"redis://{REDIS_USER}:{REDIS_PASSWORD}@127.0.0.1:{free_port()}/0", ttl=30)
    assert cache.get_or_load("alerts", ["q"], lambda: 1) == (1, "BYPASS")
    assert cache.status() == "down"


def test_wrong_password_is_down(redis_server):
    cache = Cache(f"redis://{REDIS_USER}:wrong@127.0.0.1:{redis_server.port}/0", ttl=30)
    assert cache.get_or_load("alerts", ["q"], lambda: 1) == (1, "BYPASS")
    assert cache.status() == "down"


def test_password_given_apart_from_the_url(redis_clean):
    """REDIS_PASSWORD_FILE's way: the URL names the user, the password comes separately."""
    cache = Cache(redis_clean.url_without_password, ttl=30, password=REDIS_PASSWORD)
    assert cache.status() == "ok"
    assert cache.get_or_load("alerts", ["q"], lambda: 1) == (1, "MISS")
    assert cache.get_or_load("alerts", ["q"], lambda: 2) == (1, "HIT")
    # No URL encoding is needed for a password given this way.
    password = "p@ss:w/rd%?# "
    redis_clean.admin.execute_command("ACL", "SETUSER", "plain", "reset", "on", f">{password}", "~claude:*",
                                      "-@all", "+ping", "+get", "+set", "+incr")
    other = Cache(f"redis://plain@127.0.0.1:{redis_clean.port}/0", ttl=30, password=password)
    assert other.get_or_load("alerts", ["q"], lambda: 3) == (1, "HIT")
    wrong = Cache(redis_clean.url_without_password, ttl=30, password="wrong")
    assert wrong.get_or_load("alerts", ["q"], lambda: 4) == (4, "BYPASS") and wrong.status() == "down"
    unauthenticated = Cache(redis_clean.url_without_password, ttl=30)  # the user, but no password at all
    assert unauthenticated.get_or_load("alerts", ["q"], lambda: 5) == (5, "BYPASS")


def test_disabled_without_redis_url():
    cache = Cache("", ttl=30)
    assert cache.status() == "disabled"
    assert cache.get_or_load("alerts", ["q"], lambda: 1) == (1, "BYPASS")
    cache.invalidate("alerts")  # a no-op


def test_entries_expire_after_cache_ttl(redis_clean):
    cache = Cache(redis_clean.url, ttl=1)
    assert cache.get_or_load("predictions", ["q"], lambda: 1)[1] == "MISS"
    assert cache.get_or_load("predictions", ["q"], lambda: 2)[1] == "HIT"
    wait_for(lambda: cache.get_or_load("predictions", ["q"], lambda: 3)[1] == "MISS", timeout=4, interval=0.2,
             message="entry expiry")


def test_url_encoded_credentials_work(redis_clean):
    """The kit's role writes REDIS_URL with the user and password URL-encoded."""
    import urllib.parse

    password = "p@ss:w/rd%?#"
    redis_clean.admin.execute_command("ACL", "SETUSER", "odd:user", "reset", "on", f">{password}", "~claude:*",
                                      "-@all", "+ping", "+get", "+set", "+incr")
    url = (f"redis://{urllib.parse.quote('odd:user', safe='')}:{urllib.parse.quote(password, safe='')}"
           f"@127.0.0.1:{redis_clean.port}/0")
    cache = Cache(url, ttl=30)
    assert cache.status() == "ok"
    assert cache.get_or_load("alerts", ["q"], lambda: 1) == (1, "MISS")
    assert cache.get_or_load("alerts", ["q"], lambda: 2) == (1, "HIT")
