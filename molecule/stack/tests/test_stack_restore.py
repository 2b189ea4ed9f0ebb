"""restore.yml on the whole stack, with clients writing through Nginx.

pgBackRest (latest state): PostgreSQL goes away for the restore while the
daemons keep taking writes into their SQLite fallback; afterwards every write a
client saw acknowledged is in PostgreSQL exactly once. Dump: the daemons are
stopped for the swap and answer again afterwards.
"""

import os
import subprocess
import threading
import time

from test_stack import DATA, RUN_ID, http, healths, psql, wait_for_database

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
PLAYBOOK = os.path.join(os.environ["MOLECULE_PROJECT_DIRECTORY"], "playbooks", "restore.yml")
testinfra_hosts = ["stack-data"]


def restore(*args):
    proc = subprocess.run(["ansible-playbook", "-i", INVENTORY, PLAYBOOK, *args], capture_output=True, text=True,
                          timeout=900, check=False, env=dict(os.environ, ANSIBLE_NOCOLOR="1"))
    return proc.returncode, proc.stdout + proc.stderr


class Writer(threading.Thread):
    """Posts alerts through Nginx, one every 50 ms, at most `limit`; records what each client saw."""

    def __init__(self, prefix, limit=3000):
        super().__init__(daemon=True)
        self.prefix, self.limit, self.stop = prefix, limit, threading.Event()
        self.seen = {}

    def run(self):
        for i in range(self.limit):
            if self.stop.is_set():
                break
            alert_id = f"{self.prefix}-{i}"
            try:
                self.seen[alert_id] = http("POST", "/api/alerts", {"id": alert_id, "level": "info", "title": "w"},
                                           timeout=5)[0]
            except OSError:
                self.seen[alert_id] = "no answer"
            time.sleep(0.05)


def stored(prefix):
    return set(psql(f"SELECT id FROM alerts WHERE id LIKE '{prefix}-%'").split())


def test_a_physical_restore_under_writes_keeps_every_acknowledged_write_once(host):
    wait_for_database("postgresql")
    writer = Writer(f"pitr-{RUN_ID}")
    writer.start()
    time.sleep(3)
    rc, out = restore("-e", "restore_method=pgbackrest")
    time.sleep(5)
    writer.stop.set()
    writer.join(30)
    assert rc == 0, out[-3000:]
    wait_for_database("postgresql")
    deadline = time.time() + 90
    while time.time() < deadline and any(body.get("pending_sync") for _s, _h, body in healths()):
        time.sleep(2)
    acked = {k for k, v in writer.seen.items() if v == 201}
    failed = {k: v for k, v in writer.seen.items() if v != 201}
    in_pg = stored(writer.prefix)
    print(f"writes sent {len(writer.seen)}, acknowledged {len(acked)}, not acknowledged {len(failed)}, "
          f"in PostgreSQL {len(in_pg)}")
    assert len(acked) > 100
    assert acked <= in_pg, f"acknowledged but lost: {sorted(acked - in_pg)[:10]}"
    # Some writes went through the fallback (PostgreSQL was away), each copied in once.
    copied = psql(f"SELECT count(*), count(DISTINCT remote_id) FROM fallback_sync_log WHERE table_name = 'alerts' "
                  f"AND outcome = 'applied' AND remote_id LIKE '{writer.prefix}-%'").split("|")
    assert int(copied[0]) >= 1 and copied[0] == copied[1]
    assert psql("SELECT count(*) FROM (SELECT origin, table_name, local_id FROM fallback_sync_log"
                " WHERE operation = 'insert' GROUP BY 1, 2, 3 HAVING count(*) > 1) d") == "0"


def test_a_logical_restore_stops_the_daemons_and_starts_them_again(host):
    before = stored(f"pitr-{RUN_ID}")
    rc, out = restore("-e", "restore_method=dump")
    assert rc == 0, out[-3000:]
    assert "Stop the daemons" in out and "Start the daemons again" in out
    wait_for_database("postgresql", timeout=60)
    # The newest dump was taken at deploy, before these writes: they are gone, as a dump restore means.
    assert stored(f"pitr-{RUN_ID}") <= before
    assert DATA.run("test -n \"$(ls /var/backups/claude-kit/dumps/*.json)\"").rc == 0
