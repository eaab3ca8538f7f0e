import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # distpool, for spawned ranks too
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.pop("DISTID_THREADS", None)  # one thread per process in tests (see launch/setup.sh)
os.environ.setdefault("DISTID_BACKEND", "gloo")  # the suite is a CPU suite, also on a GPU machine
os.environ["DISTID_STRICT_CHARTS"] = "1"  # a chart with overlapping text fails the test that drew it

from distpool import DistPool  # noqa: E402

pytest_plugins = ["writes_nowhere", "ci_skips"]  # the session fails if a test wrote into the repository,
# or (under CI) if a test skipped for a reason other than a documented gate

_pools: dict[int, DistPool] = {}


def pytest_configure(config):
    config.addinivalue_line("markers", "alone: measures the loopback interface, so no other test may run beside it "
                                       "(launch/test.sh runs these first, then the rest on two pytest-xdist workers)")


@pytest.fixture(scope="session")
def dist_pool():
    """dist_pool(n) -> a live DistPool of n gloo ranks (re-created after a failure)."""

    def get(n: int) -> DistPool:
        pool = _pools.get(n)
        if pool is None or not pool.alive:
            pool = _pools[n] = DistPool(n)
        return pool

    yield get
    for pool in _pools.values():
        pool.close()
