"""The health runbook's filters (plugins/filter/health.py): what a host's
report becomes in the table, and that a host without a report is never OK."""

import json

import pytest

from ansible_collections.claude_kit.stack.plugins.filter.health import (
    health_collect,
    health_rows,
    health_table,
    threshold_text,
)


def report(*services):
    return {"host": "h", "state": "OK", "code": 0, "services": list(services)}


def service(name, *checks):
    return {"service": name, "checks": list(checks)}


def check(name, code, summary="", warning=None, critical=None, unit=""):
    return {"name": name, "code": code, "state": ["OK", "WARNING", "CRITICAL", "UNKNOWN"][code],
            "summary": summary, "value": None, "warning": warning, "critical": critical, "unit": unit}


def test_rows_keep_each_hosts_check_order_and_sort_the_hosts():
    results = {
        "web": report(service("nginx", check("status", 0, "up"), check("active", 0, "3", 500, 900))),
        "db": report(service("postgresql", check("ready", 0, "accepting"), check("connections", 1, "81%", 80, 95, "%"))),
    }
    rows = health_rows(results)
    assert [(r["host"], r["check"]) for r in rows] == [
        ("db", "ready"), ("db", "connections"), ("web", "status"), ("web", "active")]
    assert rows[1]["state"] == "WARNING" and rows[1]["threshold"] == "warn 80 / crit 95 %"


@pytest.mark.parametrize("answer", [
    {"error": "not checked: host unreachable or the check did not run"},
    "Traceback (most recent call last): ...",
    {"something": "else"},
    None,
])
def test_a_host_without_a_report_is_an_unknown_row_never_ok(answer):
    rows = health_rows({"db": answer})
    assert len(rows) == 1 and rows[0]["state"] == "UNKNOWN" and rows[0]["code"] == 3
    assert rows[0]["service"] == "-"


def test_a_host_with_no_checks_says_so():
    rows = health_rows({"lonely": report()})
    assert rows == [{"host": "lonely", "service": "-", "check": "-", "state": "OK", "code": 0,
                     "value": "no checks on this host", "threshold": ""}]


def test_a_report_given_as_json_text_is_parsed():
    text = json.dumps(report(service("redis", check("ping", 2, "not answering"))))
    assert health_rows({"cache": text})[0]["state"] == "CRITICAL"


@pytest.mark.parametrize("item, text", [
    (check("x", 0), ""),
    (check("x", 0, warning=80, critical=95, unit="%"), "warn 80 / crit 95 %"),
    (check("x", 0, warning=0.95, critical=0.9, unit="ratio"), "warn 0.95 / crit 0.9"),
    (check("x", 0, warning=691200.0, unit="s"), "warn 691200 s"),
    (check("x", 0, critical=10, unit="count"), "crit 10"),
])
def test_threshold_text(item, text):
    assert threshold_text(item) == text


def test_collect_reads_each_hosts_registered_run_and_marks_the_missing():
    ok = {"rc": 0, "stdout": json.dumps(report()), "stderr": ""}
    crashed = {"rc": 1, "stdout": "", "stderr": "python3: can't open file"}
    hostvars = {"a": {"health_run": ok}, "b": {"health_run": crashed}, "c": {}}
    results = health_collect(hostvars, ["a", "b", "c", "d"])
    assert results["a"]["services"] == []
    assert results["b"]["error"].startswith("claude-kit-check failed (exit 1): python3: can't open file")
    assert "unreachable" in results["c"]["error"] and "unreachable" in results["d"]["error"]


def test_table_lines_and_the_closing_count():
    rows = health_rows({
        "db": report(service("postgresql", check("ready", 2, "not accepting connections"), check("disk", 3, "?"))),
        "web": report(service("nginx", check("status", 0, "up"))),
    })
    lines = health_table(rows)
    assert [cell.strip() for cell in lines[0].split(" | ")] == ["host", "service", "check", "state", "value",
                                                                 "threshold"]
    assert any("db   | postgresql | ready  | CRITICAL" in line for line in lines)
    assert lines[-1] == "1 CRITICAL, 1 UNKNOWN, 1 OK"


def test_rows_refuse_what_is_not_a_mapping():
    with pytest.raises(TypeError, match="health_rows: expects a mapping"):
        health_rows(["db"])
