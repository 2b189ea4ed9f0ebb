"""Filters of the health runbook (playbooks/health.yml).

Pure functions, no I/O; unit-tested in tests/unit/test_health_filter.py.

    {{ hostvars | health_collect(ansible_play_hosts_all) }}   {host: report}
    {{ results | health_rows }}      one row per check of every host
    {{ rows | health_table }}        the rows as text lines (host | service | check | state | value | threshold)

`results` maps each inventory host to what `claude-kit-check --json all`
printed there (a JSON document, parsed or not) or to an error text when the
program could not run. A host without an answer is a row of its own with
state UNKNOWN: a check that did not run is never shown as OK.
"""

from __future__ import annotations

import json

from ansible_collections.claude_kit.stack.plugins.module_utils.kit_module import render_table

STATES = {0: "OK", 1: "WARNING", 2: "CRITICAL", 3: "UNKNOWN"}
COLUMNS = ("host", "service", "check", "state", "value", "threshold")


def _number(value):
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def threshold_text(check):
    """'warn 80 / crit 95 %' from a check's warning, critical and unit; '' when it has none."""
    warning, critical = check.get("warning"), check.get("critical")
    if warning is None and critical is None:
        return ""
    parts = []
    if warning is not None:
        parts.append(f"warn {_number(warning)}")
    if critical is not None:
        parts.append(f"crit {_number(critical)}")
    unit = check.get("unit") or ""
    return " / ".join(parts) + (f" {unit}" if unit and unit not in ("count", "ratio") else "")


def health_collect(hostvars, hosts, key="health_run"):
    """{host: parsed report or error text} from each host's registered command result."""
    results = {}
    for host in hosts:
        run = (hostvars.get(host) or {}).get(key) if hasattr(hostvars, "get") else None
        if not isinstance(run, dict) or "stdout" not in run:
            results[host] = {"error": "not checked: host unreachable or the check did not run"}
            continue
        try:
            results[host] = json.loads(run["stdout"])
        except ValueError:
            text = (run.get("stderr") or run.get("stdout") or run.get("msg") or "").strip()
            results[host] = {"error": f"claude-kit-check failed (exit {run.get('rc')}): {text}"}
    return results


def health_rows(results):
    """Flatten {host: report} into rows sorted by host, keeping each host's check order."""
    if not isinstance(results, dict):
        raise TypeError(f"health_rows: expects a mapping of host to report, got {type(results).__name__}")
    rows = []
    for host in sorted(results):
        report = results[host]
        if isinstance(report, str):
            try:
                report = json.loads(report)
            except ValueError:
                report = {"error": report}
        if not isinstance(report, dict) or "services" not in report:
            error = report.get("error") if isinstance(report, dict) else None
            rows.append({"host": host, "service": "-", "check": "-", "state": "UNKNOWN", "code": 3,
                         "value": (error or "no report from claude-kit-check").splitlines()[0][:120],
                         "threshold": ""})
            continue
        if not report["services"]:
            rows.append({"host": host, "service": "-", "check": "-", "state": "OK", "code": 0,
                         "value": "no checks on this host", "threshold": ""})
        for service in report["services"]:
            for check in service.get("checks") or []:
                code = check.get("code", 3)
                rows.append({
                    "host": host,
                    "service": service.get("service", "?"),
                    "check": check.get("name", "?"),
                    "state": check.get("state") or STATES.get(code, "UNKNOWN"),
                    "code": code,
                    "value": check.get("summary", "" if check.get("value") is None else _number(check["value"])),
                    "threshold": threshold_text(check),
                })
    return rows


def health_table(rows):
    """Text lines of the rows, then one line counting them by state."""
    lines = render_table(COLUMNS, rows)
    counts = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    order = ["CRITICAL", "UNKNOWN", "WARNING", "OK"]
    lines.append(", ".join(f"{counts[state]} {state}" for state in order if state in counts) or "no checks")
    return lines


class FilterModule:
    """Health runbook filters."""

    def filters(self):
        return {"health_collect": health_collect, "health_rows": health_rows, "health_table": health_table}
