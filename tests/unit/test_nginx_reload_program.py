"""The decisions of roles/nginx/files/claude-kit-nginx-reload that need no Nginx: which error-log
lines count as the master's refusal of a reload (its own pid only, written after the reload,
the log rotated or truncated meanwhile), which refusals a restart cures, and what it prints and
exits with for each outcome. The reload itself is tested against a real Nginx in the stack
scenario (test_security_nginx.py)."""

import importlib.machinery
import importlib.util
import os

import pytest

PROGRAM = os.path.join(os.path.dirname(__file__), "..", "..", "roles", "nginx", "files", "claude-kit-nginx-reload")


def load():
    loader = importlib.machinery.SourceFileLoader("claude_kit_nginx_reload", PROGRAM)
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader("claude_kit_nginx_reload", loader))
    loader.exec_module(module)
    return module


KEY_CHANGE = ('2026/12/03 11:36:41 [emerg] 829#829: limit_req "claude_api" uses the "$claude_limit_key" key '
              'while previously it used the "$binary_remote_addr" key')
BIND = "2026/12/03 11:40:00 [emerg] 829#829: bind() to 10.0.0.1:9113 failed (98: Address already in use)"
WORKER_ALERT = "2026/12/03 11:40:00 [alert] 900#900: 1024 worker_connections are not enough"
NOTICE = "2026/12/03 11:40:00 [notice] 829#829: signal process started"


@pytest.fixture
def program(tmp_path, monkeypatch):
    module = load()
    log = tmp_path / "error.log"
    log.write_text(NOTICE + "\n")
    monkeypatch.setattr(module, "ERROR_LOG", str(log))
    return module, log


def test_only_the_masters_lines_written_after_the_reload_count(program):
    module, log = program
    log.write_text(BIND + "\n")  # an older refusal, before the position below
    position = module.log_position()
    with log.open("a") as handle:
        handle.write(WORKER_ALERT + "\n" + NOTICE + "\n")
    assert module.refusal_since(position, 829) == ""  # a worker's alert is not the master's refusal
    with log.open("a") as handle:
        handle.write(KEY_CHANGE + "\n")
    assert module.refusal_since(position, 829) == KEY_CHANGE
    assert module.refusal_since(position, 8290) == ""  # another master's pid


def test_a_log_rotated_or_truncated_since_is_read_from_its_start(program):
    module, log = program
    log.write_text(NOTICE * 20 + "\n")
    position = module.log_position()
    log.write_text(BIND + "\n")  # truncated: shorter than the position's offset
    assert module.refusal_since(position, 829) == BIND
    rotated = log.with_name("error.log.1")
    log.rename(rotated)
    log.write_text(KEY_CHANGE + "\n" + NOTICE * 40 + "\n")  # a new file, longer than the old offset
    assert os.path.getsize(log) > position[1]
    assert module.refusal_since(position, 829) == KEY_CHANGE


@pytest.mark.parametrize("line, cured", [(KEY_CHANGE, True), (BIND, False),
                                         ("no new worker process within 30 s of the reload", False)])
def test_only_a_changed_zone_key_is_cured_by_a_restart(line, cured):
    assert bool(load().RESTART_CURES.search(line)) is cured


@pytest.mark.parametrize("outcome, flag, restart_rc, rc, out, err", [
    ("reloaded", False, None, 0, "reloaded", ""),
    ("started", False, None, 0, "started", ""),
    (("refused", KEY_CHANGE), True, 0, 0, f"restarted: {KEY_CHANGE}", ""),
    (("refused", KEY_CHANGE), False, None, 1, "", f"refused: {KEY_CHANGE}"),
    (("refused", BIND), True, None, 1, "", f"refused: {BIND}"),
    (("refused", KEY_CHANGE), True, 1, 1, "", f"refused: {KEY_CHANGE}; the restart failed too: boom"),
], ids=["reloaded", "started", "restarted", "refused-without-flag", "bind-never-restarted", "restart-fails"])
def test_what_it_prints_and_exits_with(monkeypatch, capsys, outcome, flag, restart_rc, rc, out, err):
    module = load()
    calls = []

    class Done:
        def __init__(self, code):
            self.returncode, self.stderr = code, "boom"

    def systemctl(*args):
        calls.append(args)
        return Done(restart_rc)

    monkeypatch.setattr(module, "reload", lambda timeout: outcome)
    monkeypatch.setattr(module, "systemctl", systemctl)
    monkeypatch.setattr("sys.argv", ["claude-kit-nginx-reload"] + (["--restart-if-refused"] if flag else []))
    assert module.main() == rc
    captured = capsys.readouterr()
    assert captured.out.strip() == out and captured.err.strip() == err
    assert calls == ([("restart",)] if restart_rc is not None else [])
