"""The hop from Nginx (and Prometheus) to the daemons, over verified TLS: each daemon's port
answers only TLS 1.2 or newer, with its host's certificate, which verifies against the kit's
CA for the one name Nginx and Prometheus check (kit_daemon_tls_name); Nginx really proxies
over TLS (the daemon logs the protocol of each request); the daemon reads a copy of the host's
key that only its uid can read, mounted as a directory.

The probes run on stack-data: the web and monitoring host, which the app hosts' firewall
admits to the daemon's port. The renewal without a restart is in test_tls.py's forced
rotation.
"""

import json
import shlex
import time
import uuid

import testinfra.utils.ansible_runner

from test_stack import APPS, DATA, INVENTORY, http

testinfra_hosts = ["stack-data"]
VARS = testinfra.utils.ansible_runner.AnsibleRunner(INVENTORY).get_variables("stack-data")
PORT = int(VARS["kit_daemon_port"])
NAME = VARS.get("kit_daemon_tls_name", "claude-daemon.internal")
CA_FILE = VARS.get("kit_tls_ca_file", "/etc/claude-kit/tls/ca.crt")
CONTAINER = VARS.get("kit_daemon_container_name", "claude-daemon")
CONFIG_DIR = "/etc/claude-daemon"


def address(host):
    return host.interface("eth0").addresses[0]


def s_client(app, *options):
    """openssl s_client from stack-data to the app host's daemon: (rc, output)."""
    cmd = (f"openssl s_client -connect {address(app)}:{PORT} -CAfile {CA_FILE} -verify_return_error "
           + " ".join(shlex.quote(o) for o in options) + " </dev/null")
    result = DATA.run(cmd)
    return result.rc, result.stdout + result.stderr


def test_the_daemons_port_answers_no_plain_http(host):
    script = ("import http.client, sys\n"
              "c = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=5)\n"
              "try:\n"
              "    c.request('GET', '/health'); print(c.getresponse().status)\n"
              "except Exception as e:\n"
              "    print(type(e).__name__)\n")
    for app in APPS:
        answer = DATA.check_output("python3 -c %s %s %s", script, address(app), str(PORT))
        assert not answer.isdigit(), f"{app.backend.get_hostname()} answered plain HTTP: {answer}"


def test_the_daemons_certificate_verifies_against_the_kit_ca_for_the_shared_name(host):
    for app in APPS:
        rc, out = s_client(app, "-servername", NAME, "-verify_hostname", NAME)
        assert rc == 0 and "Verify return code: 0 (ok)" in out, out[-800:]
        assert ("Protocol  : TLSv1.3" in out or "Protocol  : TLSv1.2" in out
                or "New, TLSv1.3" in out or "New, TLSv1.2" in out), out[-800:]
        # Another name is refused: the shared name is what makes it verify.
        rc, out = s_client(app, "-verify_hostname", "not-the-daemon.example")
        assert rc != 0 and "hostname mismatch" in out, out[-800:]


def test_a_tls_1_1_client_is_refused(host):
    for app in APPS:
        # SECLEVEL=0 lets the client offer TLS 1.1: the refusal is then the daemon's alert.
        rc, out = s_client(app, "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0")
        assert rc != 0 and "alert protocol version" in out, out[-800:]
        assert s_client(app, "-tls1_2", "-verify_hostname", NAME)[0] == 0


def test_nginx_proxies_to_the_daemons_over_verified_tls(host):
    conf = DATA.file("/etc/nginx/nginx.conf").content_string
    assert "proxy_pass https://claude_daemon;" in conf and "proxy_pass http://" not in conf
    for line in ("proxy_ssl_verify on;", f"proxy_ssl_trusted_certificate {CA_FILE};", f"proxy_ssl_name {NAME};",
                 "proxy_ssl_protocols TLSv1.2 TLSv1.3;", "proxy_ssl_session_reuse on;"):
        assert line in conf, line
    # A request through Nginx is logged by a daemon with the TLS protocol it came over, from
    # the web host: plain HTTP from Nginx would be refused, and would log tls=-.
    path = f"/api/tls-hop-{uuid.uuid4().hex[:12]}"
    status, _headers, body = http("GET", path)
    assert status == 404 and body == {"error": "not found"}, (status, body)  # the daemon's own 404
    lines = []
    for app in APPS:
        logs = app.run("docker logs --since 10m %s 2>&1", CONTAINER).stdout
        lines += [line for line in logs.splitlines() if f"path={path} " in line]
    assert len(lines) == 1, lines
    assert f"client={address(DATA)} " in lines[0] and (" tls=TLSv1.3" in lines[0] or " tls=TLSv1.2" in lines[0]), lines


def test_the_daemon_reads_its_own_copy_of_the_key_mounted_as_a_directory(host):
    for app in APPS:
        name = app.backend.get_hostname()
        directory = app.file(f"{CONFIG_DIR}/tls")
        assert (directory.uid, directory.mode) == (10001, 0o500), name
        key = app.file(f"{CONFIG_DIR}/tls/server.key")
        assert (key.uid, key.gid, key.mode) == (10001, 0, 0o400), name
        assert key.md5sum == app.file(VARS.get("kit_tls_key_file", "/etc/claude-kit/tls/server.key")).md5sum, name
        mounts = json.loads(app.check_output("docker inspect -f '{{json .Mounts}}' %s", CONTAINER))
        tls = [m for m in mounts if m["Destination"] == "/run/daemon-tls"]
        assert tls and tls[0]["Source"] == f"{CONFIG_DIR}/tls" and tls[0]["RW"] is False, mounts
        env = app.check_output("docker inspect -f '{{json .Config.Env}}' %s", CONTAINER)
        assert "DAEMON_TLS_CERT=/run/daemon-tls/server.crt" in env and "PRIVATE KEY" not in env, name


def test_the_images_healthcheck_passes_over_https(host):
    for app in APPS:
        deadline = time.time() + 90  # a container an earlier test restarted may still be "starting"
        while True:
            health = json.loads(app.check_output("docker inspect -f '{{json .State.Health}}' %s", CONTAINER))
            if health["Status"] != "starting" or time.time() > deadline:
                break
            time.sleep(3)
        assert health["Status"] == "healthy", health["Log"][-1:]
