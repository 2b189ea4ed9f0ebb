"""Tests of the reference daemon (daemon/). A package, so that its conftest does not
shadow tests/unit/conftest.py as the module named `conftest`."""
