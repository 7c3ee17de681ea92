"""Prints the browser test's latency benchmark (the lines the test leaves in
``config.wsss_widget_latency``) in pytest's terminal summary."""
from __future__ import annotations


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    lines = getattr(config, "wsss_widget_latency", None)
    if lines:
        terminalreporter.section("widget latency (benchmark, not a limit)")
        for line in lines:
            terminalreporter.write_line(line)
