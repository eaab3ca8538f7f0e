"""A pytest plugin: under CI (the CI environment variable set, as CI runs `.ci/run`), a skipped
test fails the session unless its reason is a documented gate — no CUDA GPU (or one that keeps
PowerSGD off CPU tensors), the opt-in fetches from npm and apt, a machine that refuses a private
network namespace (not root, and ordinary users may not make user namespaces) or a kernel without
netem (README). A missing `tc`, `ip` or `unshare` is no gate: install iproute2 and util-linux. A suite whose data
went missing cannot go green by skipping."""

import os

GATES = ("needs a CUDA GPU", "set DISTID_TEST_NPM=1", "set DISTID_TEST_APT=1",
         "cannot run on a machine with a CUDA GPU",  # PowerSGD on CPU tensors beside a GPU
         "needs a private network namespace", "needs netem")  # the shaped loopback (tests/test_shaped.py)
SKIPPED: list[str] = []  # "test id: reason" of this session's other skips


def reason(report) -> str:
    """The skip reason pytest shows ("Skipped: " removed)."""
    text = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    return text.removeprefix("Skipped: ")


def pytest_runtest_logreport(report):
    if report.skipped and not hasattr(report, "wasxfail") and not any(g in reason(report) for g in GATES):
        SKIPPED.append(f"{report.nodeid}: {reason(report)}")


def pytest_collectreport(report):  # a whole module skipped while collecting (importorskip at the top)
    pytest_runtest_logreport(report)


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("CI") and SKIPPED:
        shown = "; ".join(SKIPPED[:3]) + (f" and {len(SKIPPED) - 3} more" if len(SKIPPED) > 3 else "")
        print(f"\nerror: under CI a test may skip only for a documented gate ({', '.join(GATES)}); "
              f"{len(SKIPPED)} skipped for another reason: {shown}")
        session.exitstatus = 1
