"""What several of the stack's test files share."""


def report(request, text):
    """A line in pytest's output whatever the outcome (a load's numbers, a run's time), past its capture."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(text)
