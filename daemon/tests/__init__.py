"""Tests of the reference daemon (daemon/claude_daemon). A package, so that its conftest
is not imported as the module named `conftest`, which tests/unit/conftest.py (the plugins'
tests, often run in the same pytest session) already is."""
