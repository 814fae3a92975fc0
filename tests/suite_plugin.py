"""How the suite runs on two workers, and where its time goes (loaded by tests/conftest.py).

- QEMU boots that share an image (the session's arm64 or armhf device, a module's own image)
  form one xdist group, so that image is built once and its boots run one after another on
  one worker while the other worker runs everything else (`make test`: `-n 2 --dist loadgroup`).
- The terminal summary ends with the time spent in each test file (setup, call and teardown
  added up), so a slow-down shows in the next CI log.
"""

from __future__ import annotations

from collections import defaultdict

import pytest

SHARED_IMAGES = {
    "arm64_device": "qemu-arm64",
    "arm64_boot_test": "qemu-arm64",
    "armhf_device": "qemu-armhf",
    "armhf_base": "qemu-armhf",
}


def boot_group(item: pytest.Item) -> str | None:
    """The xdist group of a QEMU test: the shared image it boots, else its module."""
    if item.get_closest_marker("slow") is None:
        return None
    names = getattr(item, "fixturenames", ())
    for fixture, group in SHARED_IMAGES.items():
        if fixture in names:
            return group
    return "qemu-" + item.nodeid.split("::")[0]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each QEMU test with its group. First of all such hooks: xdist's own, in each worker,
    reads the marks to append `@group` to the node ids it schedules by, and a mark added after
    it is never seen (each worker then built and booted the shared images again)."""
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        group = boot_group(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    per_file: dict[str, float] = defaultdict(float)
    for reports in terminalreporter.stats.values():
        for report in reports:
            if isinstance(report, pytest.TestReport):
                per_file[report.nodeid.split("::")[0]] += report.duration
    if not per_file:
        return
    terminalreporter.section("time per test file (setup + call + teardown, summed)")
    for path, seconds in sorted(per_file.items(), key=lambda kv: -kv[1])[:25]:
        terminalreporter.write_line(f"{seconds:8.1f} s  {path}")
    terminalreporter.write_line(f"{sum(per_file.values()):8.1f} s  all {len(per_file)} files")
