"""What a failover costs the application, measured: the primary's container
is killed under a bounded write load (the whole host gone), then started
again; then a planned switchover. Runs after test_cluster.py (file order)."""

import json
import os
import pathlib
import threading
import time
import uuid

import psycopg2

from helpers import (
    MEMBERS,
    PROJECT_DIR,
    LOOP_WAIT,
    TTL,
    WriteLoad,
    cluster,
    connect,
    docker,
    healthy,
    leader,
    run_playbook,
    wait_for,
)

# What the tests below measured: printed (pytest -s) and written to
# ha-failover.json in ./kit's results directory (.cache/test-results).
REPORT = {}


def _record(key, figures):
    REPORT[key] = figures
    print(f"{key}:", json.dumps(figures))
    directory = pathlib.Path(os.environ.get("KIT_TEST_RESULTS") or PROJECT_DIR / ".cache" / "test-results")
    directory.mkdir(parents=True, exist_ok=True)
    report = {k: v for k, v in REPORT.items() if not k.endswith("_ids")}
    (directory / "ha-failover.json").write_text(json.dumps(report, indent=2) + "\n")


def _stored(ids, hosts=None):
    """How many times each id is stored, read from the primary (or the hosts given)."""
    with connect(hosts, read_write=hosts is None) as conn, conn.cursor() as cur:
        cur.execute("SELECT id, count(*) FROM alerts WHERE id = ANY(%s) GROUP BY id", (list(ids),))
        return dict(cur.fetchall())


def _wait_healthy(alive, timeout):
    return wait_for(lambda: (lambda d: d if healthy(d, alive) else None)(cluster(alive)), timeout,
                    what=f"a healthy cluster of {alive}")


class PrimaryProbe:
    """Polls each given member directly (no dead host in the way) with one write every 0.25 s;
    records when the first of them acknowledged one: the moment a new primary accepts writes."""

    def __init__(self, members, prefix):
        self.members, self.prefix, self.first = members, prefix, None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        n = 0
        deadline = time.monotonic() + 120
        while self.first is None and time.monotonic() < deadline:
            for name in self.members:
                n += 1
                try:
                    with connect([MEMBERS[name]], read_write=False, timeout=2) as conn, conn.cursor() as cur:
                        cur.execute("INSERT INTO alerts (id, level, title, timestamp) "
                                    "VALUES (%s, 'info', 'ha probe', now())", (f"{self.prefix}-{n:05d}",))
                    self.first = (time.monotonic(), name)
                    return
                except psycopg2.Error:  # a replica refuses the write, a dying member times out: both mean "not yet"
                    pass
            time.sleep(0.25)

    def start(self):
        self._thread.start()
        return self

    def wait(self):
        self._thread.join(timeout=130)
        return self.first


def test_killing_the_primary_under_write_load_loses_no_acknowledged_write():
    before = _wait_healthy(list(MEMBERS), 90)
    old = leader(before)
    survivors = [name for name in MEMBERS if name != old]
    load = WriteLoad(f"ha-kill-{uuid.uuid4().hex[:8]}", rate=20, max_seconds=150).start()
    time.sleep(5)
    assert len(load.acked) > 20, load.errors[-5:]
    killed_at = time.monotonic()
    docker("kill", old)
    probe = PrimaryProbe(survivors, f"ha-probe-{uuid.uuid4().hex[:8]}").start()
    # The load goes on until a new primary has acknowledged writes for 10 s.
    def ten_seconds_on_a_new_primary():
        after = [t for name in survivors for t in load.acked_after(killed_at, MEMBERS[name])]
        return bool(after) and time.monotonic() - min(after) > 10

    wait_for(ten_seconds_on_a_new_primary, 120, 0.5, "writes on a new primary")
    load.stop()
    after = _wait_healthy(survivors, 60)
    new = leader(after)
    promoted = probe.wait()
    assert promoted is not None and promoted[1] == new, (promoted, new)
    seconds_to_new_primary = promoted[0] - killed_at
    # What the application saw: its first write acknowledged by the new primary.
    first_ack = min(load.acked_after(killed_at, MEMBERS[new]))
    acked = load.ids()
    stored = _stored(acked + load.unknown)
    lost = [i for i in acked if stored.get(i, 0) != 1]
    _record("kill", {
        "old_primary": old, "new_primary": new, "seconds_to_new_primary": round(seconds_to_new_primary, 1),
        "seconds_to_first_client_write": round(first_ack - killed_at, 1),
        "longest_gap_s": round(load.longest_gap(), 1), "acknowledged": len(acked), "lost": len(lost),
        "unknown_outcome": len(load.unknown), "unknown_stored": sum(stored.get(i, 0) for i in load.unknown),
        "connection_attempts_refused": load.refused,
        "acked_by_killed_host_after_1s": len(load.acked_after(killed_at + 1, MEMBERS[old])),
    })
    assert new in survivors
    # A killed host acknowledges nothing (an answer already on the wire may land within the first second).
    assert REPORT["kill"]["acked_by_killed_host_after_1s"] == 0
    assert lost == [], f"{len(lost)} acknowledged writes missing or duplicated: {lost[:5]}"
    # Patroni's promise: the leader lock expires at most ttl after the primary's
    # last loop, and a replica that wakes on that takes over within one loop
    # (loop_wait, 10 s). Measured here: about ttl + 5 when the killed host also
    # led etcd (etcd's new leader grants every lease its full ttl again, plus
    # Patroni's fixed 2 s status request to the dead member); see
    # docs/runbooks/failover.md.
    assert seconds_to_new_primary <= TTL + LOOP_WAIT, REPORT["kill"]
    # A write whose outcome the client could not know is stored at most once.
    assert all(stored.get(i, 0) <= 1 for i in load.unknown)
    REPORT["kill_ids"] = acked


def test_the_killed_host_started_again_rejoins_as_a_replica_with_the_new_primarys_data():
    assert "kill" in REPORT, "runs after the kill test"
    old = REPORT["kill"]["old_primary"]
    started = time.monotonic()
    docker("start", old)
    data = _wait_healthy(list(MEMBERS), 180)
    rejoined = time.monotonic() - started
    member = next(m for m in data["members"] if m["name"] == old)
    assert member["role"] in ("replica", "sync_standby")
    assert leader(data) == REPORT["kill"]["new_primary"]
    # Every write acknowledged during the failover is on the former primary now.
    ids = REPORT["kill_ids"]
    stored = wait_for(lambda: (lambda s: s if len(s) == len(ids) else None)(
        _stored(ids, [MEMBERS[old]])), 30, 1, "the acknowledged rows on the rejoined host")
    assert set(stored.values()) == {1}
    _record("rejoin", {"host": old, "seconds": round(rejoined, 1)})


def test_switchover_playbook_moves_the_primary_to_the_named_replica_losing_no_write():
    before = _wait_healthy(list(MEMBERS), 90)
    old = leader(before)
    # Synchronous mode: only the synchronous standby may be promoted (it has every commit).
    candidate = next(m["name"] for m in before["members"] if m["role"] == "sync_standby")
    load = WriteLoad(f"ha-switch-{uuid.uuid4().hex[:8]}", rate=20, max_seconds=150).start()
    time.sleep(3)
    began = time.monotonic()
    rc, output, recap = run_playbook("-e", f"switchover_candidate={candidate}",
                                     playbook=str(PROJECT_DIR / "playbooks" / "switchover.yml"))
    took = time.monotonic() - began
    time.sleep(5)
    load.stop()
    assert rc == 0, output[-3000:]
    after = _wait_healthy(list(MEMBERS), 60)
    assert leader(after) == candidate
    acked = load.ids()
    stored = _stored(acked + load.unknown)
    lost = [i for i in acked if stored.get(i, 0) != 1]
    _record("switchover", {
        "from": old, "to": candidate, "playbook_seconds": round(took, 1),
        "longest_gap_s": round(load.longest_gap(), 1), "acknowledged": len(acked), "lost": len(lost),
        "unknown_outcome": len(load.unknown),
    })
    assert lost == []
    assert f"{candidate} is the primary" in output


def test_switchover_to_a_host_that_is_not_the_synchronous_standby_is_refused_before_any_change():
    data = _wait_healthy(list(MEMBERS), 60)
    current = leader(data)
    sync = next(m["name"] for m in data["members"] if m["role"] == "sync_standby")
    asynchronous = next(m["name"] for m in data["members"] if m["name"] not in (current, sync))
    rc, output, recap = run_playbook("-e", f"switchover_candidate={asynchronous}",
                                     playbook=str(PROJECT_DIR / "playbooks" / "switchover.yml"))
    assert rc != 0
    assert f"{asynchronous} is an asynchronous replica" in output and f"switch over to {sync}" in output, \
        output[-2000:]
    assert all(r["changed"] == 0 for r in recap.values()), recap
    rc, output, recap = run_playbook("-e", f"switchover_candidate={current}",
                                     playbook=str(PROJECT_DIR / "playbooks" / "switchover.yml"))
    assert rc != 0
    assert f"{current} is the primary already" in output, output[-2000:]
    assert leader(cluster()) == current
    rc, output, recap = run_playbook("-e", "switchover_candidate=no-such-host",
                                     playbook=str(PROJECT_DIR / "playbooks" / "switchover.yml"))
    assert rc != 0
    assert "no-such-host is not a member" in output, output[-2000:]
