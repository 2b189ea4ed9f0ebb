#!/usr/bin/env python3
"""Benchmark: the app tier under HTTP load on the local lab, against the proxy's own ceiling and
against the daemon as it was before (a baseline image built from an older commit).

    ./kit run python bench/http/run.py [--baseline REF] [--duration 15] [--connections 20]
                                                  [--threads 2] [--no-uncached]

Needs the lab (`./kit deploy`). Every request goes from the lab's web host (claude-lab-web) to
the lab's own addresses, with Debian's `wrk` (installed there by the benchmark if missing), so
the client sits where Nginx's own clients would and the firewall admits it to the daemons'
published port. Bounded: each measurement is `--duration` seconds with `--connections`
connections; nothing else is sent.

What it measures, each a wrk run (requests/s, p50 and p99 latency, errors: socket errors and
answers that are not 2xx), while a sampler on the database host counts the application's
PostgreSQL connections (pg_stat_activity, client backends of the application database) every
0.5 s and keeps the peak:
  ceiling      Nginx answering a static JSON of the size of a real /api/alerts?limit=50 answer
               itself (an HTTPS server the benchmark adds to kit_nginx_include_dir and removes);
  baseline     one daemon of the --baseline image (default: the commit before the daemon moved to
               gunicorn), run by the benchmark on the first app host beside the deployed one, with
               the deployed container's environment and mounts but its own /data, directly;
  direct       the deployed daemon of the first app host, directly;
  nginx_one    through Nginx's site with only the first app host in its upstream;
  nginx_all    through Nginx's site with every app host.
Endpoints: GET /api/alerts?limit=50 served from Redis (cached), the same with the daemons' cache
off (uncached: the app tier deployed with daemon_redis_host='' for that phase), POST /api/alerts
(unique ids, `bench-http-...`, deleted at the end), and GET /health.

Through Nginx, the benchmark's client (the web host's own address) is raised with
nginx_rate_limit_raised_clients for the run (`playbooks/web.yml -e ...`): the site's limits stay
on for every other address, and the inventory's configuration is deployed again at the end, as
is the app tier's, whatever happened.

Every app host of the lab is a container on the same machine, so without a limit three daemons
compete for the same cores as one, and Nginx, wrk and PostgreSQL too: adding daemons cannot add
capacity there. `--daemon-cpus N` gives each daemon container (the deployed ones and the
baseline) at most N CPUs with `docker update --cpus` for the run, as if each app host were a
machine of its own with N cores, and sets it to every CPU of the machine at the end (Docker
cannot take a CPU limit off again; 0, the default, measures the machine as it is).

Targets, as ratios of this run: direct / baseline >= 3 (requests/s, per endpoint), nginx_all /
nginx_one >= 1.7, no errors, the application's PostgreSQL connections never above the bound
(PgBouncer's max_db_connections when the lab has PgBouncer, else the daemons' pools summed).
Prints a table and the ratios, writes bench/out/http/results-<time>.json. Exits 0 when a target
is missed (it is a measurement); non-zero only when something broke.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "bench", "out", "http")
WEB, DB = "claude-lab-web", "claude-lab-db"
BASELINE_CONTAINER = "claude-daemon-bench-baseline"
BASELINE_PORT_OFFSET = 100
STATIC_CONF = "bench-http.conf"
SEED_ALERTS = 60
WRK_SCRIPT = "/tmp/bench-http.lua"
STATIC_PORT = 18443
STATIC_FILE = "/var/lib/claude-kit-bench/alerts.json"
ENDPOINTS = ("alerts_cached", "post", "health", "alerts_uncached")
PATHS = {"alerts_cached": "/api/alerts?limit=50", "alerts_uncached": "/api/alerts?limit=50",
         "health": "/health", "post": "/api/alerts"}

# wrk's script: every request of a POST run carries a new alert id; done() prints one JSON line.
WRK_LUA = r"""
local counter, thread_id = 0, 0
local threads = {}
function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end
function init(args)
  thread_id = tid
  method = args[1] or "GET"
  path = args[2] or "/"
  host = args[3] or "localhost"
  run = args[4] or "0"
end
function request()
  if method == "POST" then
    counter = counter + 1
    local body = string.format('{"id":"bench-http-%s-%d-%d","level":"info","title":"bench"}', run, thread_id, counter)
    return wrk.format("POST", path, {["Host"] = host, ["Content-Type"] = "application/json"}, body)
  end
  return wrk.format("GET", path, {["Host"] = host})
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def sh(*args, check=True, input_=None, timeout=900):
    proc = subprocess.run(list(args), capture_output=True, text=input_ is None or isinstance(input_, str),
                          input=input_, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(shlex.quote, args))}: rc={proc.returncode}\n"
                           f"{(proc.stdout or '')[-2000:]}{(proc.stderr or '')[-2000:]}")
    return proc.stdout


def on(host, command, check=True, timeout=900):
    return sh("docker", "exec", host, "sh", "-c", command, check=check, timeout=timeout)


def kit(*args):
    """./kit run ansible-playbook ... against the lab; the playbook's output goes to a log file."""
    started = time.monotonic()
    proc = subprocess.run([os.path.join(ROOT, "kit"), "run", "ansible-playbook", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=1800, check=False)
    with open(os.path.join(OUT, "playbooks.log"), "a", encoding="utf-8") as log:
        log.write(f"\n=== ansible-playbook {' '.join(args)} (rc {proc.returncode})\n{proc.stdout}{proc.stderr}")
    if proc.returncode != 0:
        raise RuntimeError(f"ansible-playbook {' '.join(args)} failed (rc {proc.returncode}); see {OUT}/playbooks.log")
    return time.monotonic() - started


class Lab:
    """The lab's addresses and names, from its inventory (hosts.yml and group_vars)."""

    def __init__(self):
        listing = json.loads(sh("ansible-inventory", "-i", os.path.join(ROOT, "inventory", "lab", "hosts.yml"),
                                "--list", "--export"))
        hostvars = listing["_meta"]["hostvars"]
        self.apps = listing["app"]["hosts"]
        self.address = {name: hostvars[name]["lab_address"] for name in hostvars}
        self.web_ip = self.address[WEB]
        common = {}
        for path in sorted(os.listdir(os.path.join(ROOT, "inventory", "lab", "group_vars", "all"))):
            if path.endswith((".yml", ".yaml")):
                with open(os.path.join(ROOT, "inventory", "lab", "group_vars", "all", path), encoding="utf-8") as f:
                    common.update(yaml.safe_load(f) or {})
        self.daemon_port = int(common.get("kit_daemon_port", 5001))
        self.db_name = common.get("kit_db_name", "claude_daemon")
        self.app_user = common.get("kit_app_user", "claude_app")

    def upstream(self, apps):
        return [f"{self.address[name]}:{self.daemon_port}" for name in apps]


class Sampler(threading.Thread):
    """The application's PostgreSQL client backends, every 0.5 s, on the database host."""

    def __init__(self, lab):
        super().__init__(daemon=True)
        self.query = ("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                      f"AND datname = '{lab.db_name}' AND usename = '{lab.app_user}'")
        self.peak, self.stopping = 0, threading.Event()

    def run(self):
        while not self.stopping.is_set():
            out = on(DB, f"runuser -u postgres -- psql -XAtqc {shlex.quote(self.query)}", check=False, timeout=10)
            if out and out.strip().isdigit():
                self.peak = max(self.peak, int(out.strip()))
            self.stopping.wait(0.5)


class Bench:
    def __init__(self, args, lab):
        self.args, self.lab = args, lab
        self.stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self.results = []

    # --- the client --------------------------------------------------------------------------
    def prepare_client(self):
        on(WEB, "command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }")
        # Through the container's shell, not `docker cp`: /tmp is a tmpfs there, which docker cp
        # cannot see (it writes beneath the mount).
        on(WEB, f"cat > {WRK_SCRIPT} <<'EOF'\n{WRK_LUA}\nEOF")

    def wrk(self, label, endpoint, url_base, host):
        method = "POST" if endpoint == "post" else "GET"
        path = PATHS[endpoint]
        sampler = Sampler(self.lab)
        sampler.start()
        command = (f"wrk -t{self.args.threads} -c{self.args.connections} -d{self.args.duration}s --timeout 10s "
                   f"-s {WRK_SCRIPT} {shlex.quote(url_base + path)} -- {method} {shlex.quote(path)} "
                   f"{shlex.quote(host)} {label}-{endpoint}-{self.stamp}")
        try:
            out = on(WEB, command, timeout=self.args.duration + 60)
        finally:
            sampler.stopping.set()
            sampler.join()
        lines = [line for line in out.strip().splitlines() if line.startswith("{")]
        if not lines:
            raise RuntimeError(f"wrk printed no summary for {label} {endpoint}:\n{out[-2000:]}")
        summary = json.loads(lines[-1])
        seconds = summary["duration_us"] / 1e6
        errors = sum(summary[k] for k in ("connect", "read", "write", "status", "timeout"))
        row = {"config": label, "endpoint": endpoint, "requests": summary["requests"],
               "rps": round(summary["requests"] / seconds, 1), "p50_ms": summary["p50_us"] / 1000,
               "p99_ms": summary["p99_us"] / 1000, "errors": errors, "error_detail": summary,
               "pg_connections_peak": sampler.peak}
        self.results.append(row)
        print(f"  {label:<10} {endpoint:<16} {row['rps']:>9.1f} req/s  p50 {row['p50_ms']:>7.2f} ms  "
              f"p99 {row['p99_ms']:>8.2f} ms  errors {errors:<5} pg peak {sampler.peak}", flush=True)
        return row

    # --- what is measured ----------------------------------------------------------------------
    def nginx_site(self, apps):
        """The site with only `apps` upstream and the web host raised; the rest as in the inventory."""
        extra = {"nginx_rate_limit_raised_clients": [f"{self.lab.web_ip}/32"],
                 "nginx_upstream_servers": self.lab.upstream(apps)}
        kit("playbooks/web.yml", "-e", json.dumps(extra))

    def seed(self, direct):
        """SEED_ALERTS alerts through the API, so that /api/alerts?limit=50 answers a full page (a new
        lab has none; an empty list would measure nothing). Ids start bench-http- and go at the end."""
        post = ("import json, ssl, sys, urllib.request as u\n"
                "ctx = ssl.create_default_context(cafile='/etc/claude-kit/tls/ca.crt')\n"
                "opener = u.build_opener(u.ProxyHandler({}), u.HTTPSHandler(context=ctx))\n"
                "for n in range(int(sys.argv[2])):\n"
                "    body = json.dumps({'id': f'bench-http-seed-{n:03d}', 'level': ('info', 'warning', 'error')[n % 3],\n"
                "                       'title': f'Disk usage above threshold on volume {n}',\n"
                "                       'message': 'The data volume crossed its threshold; see the runbook. ' * 2,\n"
                "                       'metadata': {'host': f'node-{n % 7}', 'value': 80 + n % 20}}).encode()\n"
                "    req = u.Request(sys.argv[1] + '/api/alerts', data=body, method='POST',\n"
                "                    headers={'Content-Type': 'application/json'})\n"
                "    try:\n"
                "        opener.open(req, timeout=10).read()\n"
                "    except u.HTTPError as exc:\n"
                "        if exc.code != 409:  # 409: there from a run that was stopped before its clean-up\n"
                "            raise\n")
        on(WEB, f"python3 -c {shlex.quote(post)} {shlex.quote(direct)} {SEED_ALERTS}")

    def static_server(self):
        """An HTTPS server of Nginx's own answering a JSON of the size of a real answer."""
        fetch = ("import ssl, sys, urllib.request as u\n"
                 "ctx = ssl.create_default_context(cafile='/etc/claude-kit/tls/ca.crt')\n"
                 "opener = u.build_opener(u.ProxyHandler({}), u.HTTPSHandler(context=ctx))\n"
                 "sys.stdout.write(opener.open(sys.argv[1], timeout=10).read().decode())\n")
        body = on(WEB, f"python3 -c {shlex.quote(fetch)} https://{self.lab.web_ip}/api/alerts?limit=50")
        json.loads(body)  # a real answer, or stop here
        conf = (f"server {{\n    listen {self.lab.web_ip}:{STATIC_PORT} ssl;\n"
                "    ssl_certificate /etc/claude-kit/tls/server.crt;\n"
                "    ssl_certificate_key /etc/claude-kit/tls/server.key;\n"
                "    ssl_protocols TLSv1.2 TLSv1.3;\n"
                f"    allow {self.lab.web_ip};\n    deny all;\n"
                f"    location = /api/alerts {{ default_type application/json; alias {STATIC_FILE}; }}\n"
                "    location = /health { default_type application/json; return 200 '{\"status\":\"ok\"}'; }\n}\n")
        on(WEB, f"install -d -m 0755 {os.path.dirname(STATIC_FILE)} && cat > {STATIC_FILE} <<'EOF'\n{body}\nEOF")
        on(WEB, f"cat > /etc/nginx/claude-kit.d/{STATIC_CONF} <<'EOF'\n{conf}EOF\nnginx -t -q && systemctl reload nginx")
        return len(body.encode())

    def remove_static_server(self):
        on(WEB, f"rm -f /etc/nginx/claude-kit.d/{STATIC_CONF} {STATIC_FILE} && nginx -t -q && systemctl reload nginx",
           check=False)

    def limit_daemons(self, cpus):
        """Each deployed daemon at most `cpus` CPUs on every app host; 0: every CPU of the machine.
        (`docker update --cpus 0` does not take a limit off again: Docker ignores the 0.)"""
        for app in self.lab.apps:
            on(app, f"docker update --cpus {cpus or '$(nproc)'} claude-daemon >/dev/null")

    def baseline(self, cached):
        """The --baseline image on the first app host, configured like the deployed daemon."""
        app = self.lab.apps[0]
        on(app, f"docker rm -f {BASELINE_CONTAINER} >/dev/null 2>&1; true")
        inspect = json.loads(on(app, "docker inspect claude-daemon"))[0]
        env = [e for e in inspect["Config"]["Env"] if cached or not e.startswith("REDIS_URL=")]
        if not cached:
            env.append("REDIS_URL=")
        binds = [b for b in inspect["HostConfig"]["Binds"] or [] if not b.split(":")[1] == "/data"]
        port = self.lab.daemon_port + BASELINE_PORT_OFFSET
        args = ["docker", "run", "-d", "--name", BASELINE_CONTAINER, "-p", f"{port}:5000",
                *(["--cpus", str(self.args.daemon_cpus)] if self.args.daemon_cpus else []),
                "--tmpfs", "/data:uid=10001,gid=10001,mode=0750"]
        for item in env:
            if item.split("=", 1)[0] not in ("PATH", "PYTHONPATH", "PORT"):
                args += ["-e", item]
        for bind in binds:
            args += ["-v", bind]
        # Mounts given as `mounts` (the daemon's own TLS key, readable by its user only).
        for mount in inspect["HostConfig"].get("Mounts") or []:
            spec = f"type={mount['Type']},source={mount['Source']},target={mount['Target']}"
            args += ["--mount", spec + (",readonly" if mount.get("ReadOnly") else "")]
        args.append(self.baseline_tag)
        on(app, " ".join(map(shlex.quote, args)))
        for _ in range(60):
            if on(app, f"docker inspect -f '{{{{.State.Health.Status}}}}' {BASELINE_CONTAINER}",
                  check=False).strip() == "healthy":
                return f"https://{self.lab.address[app]}:{port}"
            time.sleep(1)
        logs = on(app, f"docker logs --tail 30 {BASELINE_CONTAINER} 2>&1", check=False)
        raise RuntimeError(f"the baseline daemon never became healthy; its log:\n{logs}")

    def build_baseline(self):
        ref = self.args.baseline
        commit = sh("git", "-C", ROOT, "rev-parse", "--short", ref).strip()
        self.baseline_tag = f"claude-daemon:bench-baseline-{commit}"
        archive = subprocess.run(["git", "-C", ROOT, "archive", ref, "daemon"], capture_output=True, check=True).stdout
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
            sh("docker", "build", "-q", "-t", self.baseline_tag, "--build-arg", "BASE_IMAGE=claude-kit-base:debian12",
               os.path.join(tmp, "daemon"), timeout=1800)
        image = subprocess.run(["docker", "save", self.baseline_tag], capture_output=True, check=True).stdout
        subprocess.run(["docker", "exec", "-i", self.lab.apps[0], "docker", "load", "-q"], input=image,
                       capture_output=True, check=True)
        return commit

    def run(self):
        lab, direct = self.lab, f"https://{self.lab.address[self.lab.apps[0]]}:{self.lab.daemon_port}"
        site, host = f"https://{lab.web_ip}:443", lab.web_ip  # wrk wants the port itself
        self.prepare_client()
        commit = self.build_baseline()
        print(f"baseline {self.args.baseline} ({commit}); {len(lab.apps)} app hosts; "
              f"{self.args.threads} threads, {self.args.connections} connections, {self.args.duration} s each; "
              f"daemons limited to {self.args.daemon_cpus or 'no limit of'} CPUs")
        phases = [(True, ("alerts_cached", "post", "health"))]
        if not self.args.uncached_off:
            phases.append((False, ("alerts_uncached",)))
        try:
            self.seed(direct)
            size = self.static_server()
            print(f"static JSON: {size} bytes")
            for endpoint in ("alerts_cached", "health"):
                self.wrk("ceiling", endpoint, f"https://{lab.web_ip}:{STATIC_PORT}", host)
            for cached, endpoints in phases:
                if not cached:
                    kit("playbooks/app.yml", "-e", json.dumps({"daemon_redis_host": ""}))
                self.limit_daemons(self.args.daemon_cpus)
                base = self.baseline(cached)
                for endpoint in endpoints:
                    self.wrk("baseline", endpoint, base, host)
                    self.wrk("direct", endpoint, direct, host)
                self.nginx_site(lab.apps[:1])
                for endpoint in endpoints:
                    self.wrk("nginx_one", endpoint, site, host)
                self.nginx_site(lab.apps)
                for endpoint in endpoints:
                    self.wrk("nginx_all", endpoint, site, host)
        finally:
            self.remove_static_server()
            on(lab.apps[0], f"docker rm -f {BASELINE_CONTAINER} >/dev/null 2>&1; true", check=False)
            on(DB, "runuser -u postgres -- psql -XAtq -d " + shlex.quote(lab.db_name)
               + " -c \"DELETE FROM alerts WHERE id LIKE 'bench-http-%'\"", check=False)
            # The inventory's own configuration again: site limits for everyone, the cache on.
            if not self.args.uncached_off:
                kit("playbooks/app.yml")
            self.limit_daemons(0)
            kit("playbooks/web.yml")
        return commit

    def bound(self):
        conf = on(DB, "cat /etc/pgbouncer/pgbouncer.ini 2>/dev/null", check=False)
        for line in conf.splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "max_db_connections" and value.strip().isdigit():
                return "pgbouncer max_db_connections", int(value.strip())
        out = on(DB, "runuser -u postgres -- psql -XAtqc 'SHOW max_connections'")
        return "max_connections", int(out.strip())


def ratios(results, bound):
    by = {(r["config"], r["endpoint"]): r for r in results}
    lines, checks = [], []
    for endpoint in ENDPOINTS:
        base, new = by.get(("baseline", endpoint)), by.get(("direct", endpoint))
        if base and new:
            value = new["rps"] / base["rps"] if base["rps"] else float("inf")
            checks.append((f"direct/baseline {endpoint}", value, value >= 3.0, ">= 3"))
        one, everyone = by.get(("nginx_one", endpoint)), by.get(("nginx_all", endpoint))
        if one and everyone:
            value = everyone["rps"] / one["rps"] if one["rps"] else float("inf")
            checks.append((f"nginx_all/nginx_one {endpoint}", value, value >= 1.7, ">= 1.7"))
    errors = sum(r["errors"] for r in results)
    peak = max((r["pg_connections_peak"] for r in results), default=0)
    for name, value, ok, target in checks:
        lines.append(f"  {name:<36} {value:6.2f}  (target {target}: {'met' if ok else 'NOT met'})")
    lines.append(f"  errors in all runs                   {errors}  (target 0: {'met' if errors == 0 else 'NOT met'})")
    lines.append(f"  PostgreSQL connections, peak         {peak}  ({bound[0]} {bound[1]}: "
                 f"{'met' if peak <= bound[1] else 'NOT met'})")
    return lines


def machine():
    cpus = os.cpu_count()
    with open("/proc/meminfo", encoding="utf-8") as f:
        mem = int(f.readline().split()[1]) // 1024
    return {"cpus": cpus, "memory_mib": mem, "kernel": os.uname().release,
            "load_before": os.getloadavg()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--baseline", default="86e5900",
                        help="commit whose daemon is the baseline (default: the last with http.server)")
    parser.add_argument("--duration", type=int, default=15, help="seconds per wrk run (bounded: 5..120)")
    parser.add_argument("--connections", type=int, default=20, help="wrk connections (1..200)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--daemon-cpus", type=float, default=0,
                        help="CPUs each daemon container may use during the run (0: no limit)")
    parser.add_argument("--no-uncached", dest="uncached_off", action="store_true",
                        help="skip the uncached phase (two app.yml runs fewer)")
    args = parser.parse_args(argv)
    if args.daemon_cpus < 0 or args.daemon_cpus > (os.cpu_count() or 1):
        parser.error("--daemon-cpus 0 (no limit) up to the machine's CPUs")
    if not 5 <= args.duration <= 120 or not 1 <= args.connections <= 200 or not 1 <= args.threads <= args.connections:
        parser.error("--duration 5..120, --connections 1..200, --threads 1..connections")
    os.makedirs(OUT, exist_ok=True)
    running = sh("docker", "inspect", "-f", "{{.State.Running}}", WEB, DB, check=False).split()
    if running != ["true", "true"]:
        parser.error("the lab is not running: ./kit deploy first")
    lab = Lab()
    bench = Bench(args, lab)
    info = machine()
    commit = bench.run()
    bound = bench.bound()
    print("\nratios (this run):")
    lines = ratios(bench.results, bound)
    print("\n".join(lines))
    path = os.path.join(OUT, f"results-{bench.stamp}.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({"machine": info, "baseline": {"ref": args.baseline, "commit": commit},
                   "tree": sh("git", "-C", ROOT, "rev-parse", "--short", "HEAD").strip(),
                   "settings": vars(args), "bound": bound, "results": bench.results, "ratios": lines},
                  handle, indent=2)
    print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
