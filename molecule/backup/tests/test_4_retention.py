"""Dump retention: old dumps go, the newest good one never does, and nothing
is deleted while the newest run failed. On copies of a real dump in a
directory of their own (the program's own --config), so the real ones stay."""

import json

import pytest
from helpers import DUMP_DIR, PROGRAM, as_postgres, manifests, start_unit

testinfra_hosts = ["backup-repo"]
WORK = "/var/tmp/retention-test"


def make_copy(host, source, days_old):
    """A copy of a real dump, dated days_old days ago (its names and manifest)."""
    script = r"""
import datetime, json, os, shutil, sys
src_dir, work, name, days = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
base = name.split(".")[0]
m = json.load(open(os.path.join(src_dir, base + ".json")))
when = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=days)
new_base = m["database"] + "_" + when.strftime("%Y%m%dT%H%M%SZ")
files = {k: v.replace(base, new_base) for k, v in m["files"].items()}
for k in ("dump", "globals", "sha256"):
    shutil.copy(os.path.join(src_dir, m["files"][k]), os.path.join(work, files[k]))
m.update(name=files["dump"], files=files, start=when.strftime("%Y-%m-%dT%H:%M:%SZ"),
         sha256={files[k]: v for k, v in zip(("dump", "globals"), m["sha256"].values())})
json.dump(m, open(os.path.join(work, files["manifest"]), "w"))
print(files["dump"])
"""
    return as_postgres(host, "python3 -c %s %s %s %s %s", script, DUMP_DIR, f"{WORK}/dumps", source,
                       str(days_old)).stdout.strip()


@pytest.fixture()
def work(host):
    config = json.loads(host.file("/etc/claude-kit/backup.json").content_string)
    config["dump"].update(dir=f"{WORK}/dumps", retention_days=7, retention_count=3)
    config["state_dir"] = f"{WORK}/state"
    host.check_output("rm -rf %s && install -d -o postgres -g postgres %s %s/dumps %s/state", WORK, WORK, WORK, WORK)
    host.check_output("printf %s %s > %s/backup.json && chown postgres %s/backup.json",
                      "%s", json.dumps(config), WORK, WORK)
    source = manifests(host)[0]["name"]
    yield lambda days: make_copy(host, source, days)
    host.check_output("rm -rf %s", WORK)


def kept(host):
    out = as_postgres(host, f"{PROGRAM} --config {WORK}/backup.json list --json").stdout
    return sorted(row["name"] for row in json.loads(out) if row["method"] == "dump" and row["verified"])


def set_last_run(host, ok):
    host.check_output("printf %s %s > %s/state/dump-last.json", "%s", json.dumps({"ok": ok}), WORK)


def test_old_dumps_go_and_the_kept_ones_are_young_or_among_the_newest(host, work):
    ages = {work(d): d for d in (30, 20, 12, 10, 9, 2, 1)}
    set_last_run(host, True)
    assert as_postgres(host, f"{PROGRAM} --config {WORK}/backup.json retention").rc == 0
    # Younger than 7 days (2, 1) or among the newest 3 (2, 1, 9): 9, 2 and 1 stay.
    assert kept(host) == sorted(n for n, d in ages.items() if d in (9, 2, 1))


def test_the_newest_good_dump_stays_however_old(host, work):
    ages = {work(d): d for d in (40, 30)}
    config = json.loads(host.file(f"{WORK}/backup.json").content_string)
    config["dump"]["retention_count"] = 1
    host.check_output("printf %s %s > %s/backup.json", "%s", json.dumps(config), WORK)
    set_last_run(host, True)
    assert as_postgres(host, f"{PROGRAM} --config {WORK}/backup.json retention").rc == 0
    assert kept(host) == [n for n, d in ages.items() if d == 30]


def test_nothing_is_deleted_while_the_newest_run_failed(host, work):
    names = sorted(work(d) for d in (30, 20, 10))
    # A dump that fails (nothing listens on that port) is the newest run.
    config = json.loads(host.file(f"{WORK}/backup.json").content_string)
    config["dump"]["port"] = 1
    host.check_output("printf %s %s > %s/backup.json", "%s", json.dumps(config), WORK)
    failed = as_postgres(host, f"{PROGRAM} --config {WORK}/backup.json dump")
    assert failed.rc == 1
    refused = as_postgres(host, f"{PROGRAM} --config {WORK}/backup.json retention")
    assert refused.rc == 1 and "retention deletes nothing" in refused.stderr
    assert kept(host) == names


def test_the_real_dump_directory_is_untouched(host):
    # The tests above worked on copies: the scheduled dump still works here.
    assert start_unit(host, "claude-kit-backup-dump.service").rc == 0
