"""playbooks/app-rolling.yml on the serving stack (docs/runbooks/app-rolling.md).

A new daemon image (the daemon's build context with one file more, so its content-derived tag
changes) is rolled out to every app host while a bounded client load goes through Nginx over HTTPS: one thread POSTing alerts with unique ids,
one reading /health, together about 9 requests a second (under Nginx's 20 r/s per address).
No request is ever retried: each must get its 2xx on the first try, because Nginx sends no
request to a daemon that is out of its upstream for its restart. Afterwards every POSTed alert
is in PostgreSQL exactly once, every app host runs the new image, and every instance is back in
the upstream. It is not rolled back here (a second roll would add four minutes to the scenario):
the next site.yml run of the scenario (conftest.py's production run, near the end) builds the
scenario's own image again and restarts the daemons on it, as any deploy after a rolling update would.
"""

import os
import pathlib
import shutil
import subprocess
import threading
import time
import uuid

import pytest

from helpers import report
from test_stack import APPS, DATA, INVENTORY, KIT, http, psql

testinfra_hosts = ["stack-data"]

PROJECT = pathlib.Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
PLAYBOOK = PROJECT / "playbooks" / "app-rolling.yml"
CONTAINER = KIT.get("kit_daemon_container_name", "claude-daemon")
UPSTREAM = "/etc/nginx/claude-kit-upstream.conf"
RUN_ID = uuid.uuid4().hex[:8]
POST_INTERVAL, HEALTH_INTERVAL = 0.2, 0.25  # 5 + 4 requests a second
MAX_REQUESTS = 6000  # bounded whatever happens


class Load:
    """POSTs with unique ids and /health reads through Nginx, each tried once; every answer kept."""

    def __init__(self, label):
        self.label, self.stop, self.lock = label, threading.Event(), threading.Lock()
        self.answers = []  # (kind, id or None, status or the error's text)
        self.threads = [threading.Thread(target=self.poster, daemon=True),
                        threading.Thread(target=self.reader, daemon=True)]

    def record(self, kind, alert_id, outcome):
        with self.lock:
            self.answers.append((kind, alert_id, outcome))
            return len(self.answers) < MAX_REQUESTS

    def poster(self):
        n = 0
        while not self.stop.is_set():
            n += 1
            alert_id = f"rolling-{RUN_ID}-{self.label}-{n}"
            try:
                status = http("POST", "/api/alerts", {"id": alert_id, "level": "info", "title": "rolling update"})[0]
            except OSError as exc:  # refused, reset, timed out: what the drain must prevent
                status = f"{type(exc).__name__}: {exc}"
            if not self.record("POST", alert_id, status):
                return
            time.sleep(POST_INTERVAL)

    def reader(self):
        while not self.stop.is_set():
            try:
                status = http("GET", "/health")[0]
            except OSError as exc:
                status = f"{type(exc).__name__}: {exc}"
            if not self.record("GET", None, status):
                return
            time.sleep(HEALTH_INTERVAL)

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        time.sleep(2)  # a little past the run's end
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def failures(self):
        return [a for a in self.answers if a[2] not in (200, 201)]

    def posted(self):
        return [a[1] for a in self.answers if a[0] == "POST" and a[2] == 201]


def running():
    """{app host: (image, started at)} of each daemon container."""
    out = {}
    for app in APPS:
        image, started = app.check_output("docker inspect -f '{{.Config.Image}} {{.State.StartedAt}}' %s",
                                          CONTAINER).split()
        out[app.backend.get_hostname()] = (image, started)
    return out


def roll(label, *extra):
    """app-rolling.yml under the load: (rc, output, seconds, load)."""
    started = time.monotonic()
    with Load(label) as load:
        proc = subprocess.run(["ansible-playbook", "-i", INVENTORY, str(PLAYBOOK), *extra], capture_output=True,
                              text=True, timeout=1800, check=False,
                              env=dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0"))
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - started, load


@pytest.fixture(scope="module")
def rolled(tmp_path_factory, request):
    # A new image: the build context with one file more (the role tags the image by content).
    build = tmp_path_factory.mktemp("rolling") / "daemon"
    shutil.copytree(PROJECT / "daemon", build, ignore=shutil.ignore_patterns("__pycache__", "tests"))
    (build / "claude_daemon" / "rolling-test.txt").write_text(f"rolled out by test_app_rolling {RUN_ID}\n")
    before = running()
    out_run = roll("out", "-e", f"daemon_build_dir={build}")
    after_out = running()
    rc, _out, seconds, load = out_run
    report(request, f"app-rolling.yml: rc {rc}, {seconds:.0f} s, {len(load.answers)} requests, "
                    f"{len(load.posted())} alerts stored, {len(load.failures())} failed")
    return {"before": before, "out": out_run, "after_out": after_out}


def test_the_rolling_update_succeeds(host, rolled):
    rc, output, _seconds, _load = rolled["out"]
    assert rc == 0, output[-4000:]
    assert "failed=1" not in output


def test_the_new_image_reached_every_app_host_one_at_a_time(host, rolled):
    before, after = rolled["before"], rolled["after_out"]
    new_images = {image for image, _started in after.values()}
    assert len(new_images) == 1 and new_images.isdisjoint({image for image, _s in before.values()}), (before, after)
    # serial: 1 in inventory order (stack-app1, stack-app2, ...: APPS's order): each host's daemon
    # started after the one before it, one host at a time over all of them.
    order = [app.backend.get_hostname() for app in APPS]
    assert len(order) >= 2, after  # else there is no order to check
    for earlier, later in zip(order, order[1:]):
        assert after[earlier][1] < after[later][1], (earlier, later, after)


def test_every_request_got_a_2xx_on_its_first_try(host, rolled):
    load = rolled["out"][3]
    assert len(load.posted()) >= 50, f"too few requests to show anything: {len(load.answers)}"
    assert load.failures() == [], load.failures()[:20]


def test_every_posted_alert_is_in_postgresql_exactly_once(host, rolled):
    posted = rolled["out"][3].posted()
    query = (f"SELECT count(*), count(DISTINCT id) FROM alerts WHERE id LIKE 'rolling-{RUN_ID}-%'")
    deadline = time.monotonic() + 60  # a write a daemon took into its SQLite fallback is copied back
    while True:
        total, distinct = map(int, psql(query).split("|"))
        if total == len(posted) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert (total, distinct) == (len(posted), len(posted))
    assert len(set(posted)) == len(posted)


def test_afterwards_every_instance_is_back_in_the_upstream(host, rolled):
    upstream = DATA.file(UPSTREAM)
    assert (upstream.user, upstream.mode) == ("root", 0o640)
    lines = [line.strip().rstrip(";").split() for line in upstream.content_string.splitlines()
             if line.strip().startswith("server ")]
    assert len(lines) == len(APPS), lines
    # No server line keeps the `down` flag the drain adds (the file's comment mentions the word).
    assert [line for line in lines if "down" in line[2:]] == [], lines
    assert DATA.run("nginx -t -q").rc == 0
    assert "include " + UPSTREAM in DATA.check_output("nginx -T 2>/dev/null")
