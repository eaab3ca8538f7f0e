"""The shaped loopback (experiments/communication/netns.py, shaped.py): rates and refusals in one line,
the shared-medium model, set-up and teardown, a shaped run no faster than its bytes allow, and an
interrupted run that leaves nothing behind.

The tests that make a namespace skip, with a documented gate (tests/ci_skips.py), where this machine
refuses one (not root, and ordinary users may not make user namespaces) or its kernel lacks netem."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from datasets_for_tests import DATA_ROOT, have_mnist
from distid.config import ConfigError
from distid.experiments.communication import links, netns, shaped
from procs import REPO, finish, run, start, user_env

NAMESPACE_GATE = "needs a private network namespace"
NETEM_GATE = "needs netem"


def namespace_refused() -> str | None:
    """Why no namespace can be made here: the gate where the machine refuses one; a missing tool is no
    gate (under CI it fails the session)."""
    try:
        netns.check_namespace()
    except ConfigError as e:
        return f"{NAMESPACE_GATE} ({e})" if "cannot make a private network namespace" in str(e) else str(e)
    return None


needs_namespace = pytest.mark.skipif(namespace_refused() is not None, reason=namespace_refused() or "")


def inside(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Python `code` run in a namespace made by netns.enter, this repository importable."""
    return run(netns.enter([sys.executable, "-c", code]), timeout, user_env(**{netns.INSIDE: "1", "PYTHONPATH": REPO}))


def host_state() -> dict:
    """What a run could leave on the host: named namespaces, interfaces, the loopback's qdisc."""
    def out(*cmd):
        return subprocess.run(cmd, capture_output=True, text=True).stdout
    return dict(netns=out("ip", "netns", "list"), links=sorted(line.split(":")[1].strip() for line in
                out("ip", "-o", "link", "show").splitlines()), qdisc=out("tc", "qdisc", "show", "dev", "lo"))


def test_rates_and_delays_parse_or_are_refused_in_one_line():
    assert netns.parse_rate("100mbit") == 1e8 and netns.parse_rate("1gbit") == 1e9
    assert netns.parse_rate("2.5mbps") == 2e7 and netns.parse_rate("none") is None
    assert netns.parse_delay("20ms") == pytest.approx(0.02) and netns.parse_delay("0") == 0.0
    for bad in ("fast", "100", "0mbit", "10 furlongs"):
        with pytest.raises(ConfigError, match="tc's units") as e:
            netns.parse_rate(bad)
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="s, ms or us"):
        netns.parse_delay("20")
    assert shaped.plan_rates("100mbit,1gbit,100mbit") == [None, 1e8, 1e9]  # unshaped first, each once


def test_cells_are_the_frontiers_and_ddp_is_always_among_them():
    assert [c.name for c in shaped.choose_cells("LoRA r=8")] == ["DDP", "LoRA r=8"]
    with pytest.raises(ConfigError, match="no frontier cell 'LoRA r=3'; choose from DDP, "):
        shaped.choose_cells("LoRA r=3")


def test_a_refused_namespace_names_the_settings_to_change(monkeypatch):
    monkeypatch.setattr(netns.shutil, "which", lambda tool: "/usr/bin/" + tool)
    monkeypatch.setattr(netns.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
        a, 1, "", "unshare: unshare failed: Operation not permitted\n"))
    monkeypatch.setattr(netns, "_blocking_settings", lambda: [])
    with pytest.raises(ConfigError) as e:
        netns.check_namespace()
    text = str(e.value)
    assert "\n" not in text and "Operation not permitted" in text and "run as root" in text
    for setting in ("kernel.unprivileged_userns_clone", "kernel.apparmor_restrict_unprivileged_userns",
                    "user.max_user_namespaces"):
        assert setting in text
    monkeypatch.setattr(netns, "_blocking_settings", lambda: ["user.max_user_namespaces is 0 (set a number above 0)"])
    with pytest.raises(ConfigError, match=r"user.max_user_namespaces is 0 \(set a number above 0\)$"):
        netns.check_namespace()


def test_a_missing_tool_names_its_package(monkeypatch):
    monkeypatch.setattr(netns.shutil, "which", lambda tool: None if tool == "tc" else "/usr/bin/" + tool)
    with pytest.raises(ConfigError, match=r"`tc` is not installed: install the iproute2 package"):
        netns.check_namespace()


def test_the_loopback_here_is_never_shaped():
    env = {k: v for k, v in os.environ.items() if k != netns.INSIDE}
    with pytest.MonkeyPatch.context() as m:
        m.setattr(os, "environ", env)
        with pytest.raises(RuntimeError, match="refusing to touch this one"):
            netns.Loopback().up()


def test_a_shared_medium_gives_each_rank_a_share_of_its_rate():
    s, b, a = 796_840, 12.5e6, 1e-4
    wire = 2 * 3 / 4 * s  # a ring all-reduce of S on 4 ranks: what one rank sends
    link = links.Link("x", 8 * b, a, "")
    assert links.link_s(wire, {"all_reduce": 1}, 4, b, a) == pytest.approx(links.allreduce_s(s, 4, link))
    assert links.link_s(wire, {"all_reduce": 1}, 4, b / 4, a) == pytest.approx(6 * s / b + 6 * a)  # one queue
    assert links.latency_hops({"all_gather": 2, "broadcast": 1}, 4) == 9


@needs_namespace
def test_a_namespace_is_shaped_and_goes_with_its_process():
    before = host_state()
    got = inside("from distid.experiments.communication import netns\n"
                 "lo = netns.Loopback(); lo.up(); lo.shape(1e8); print(lo.qdisc()); lo.shape(None); print(lo.qdisc())")
    assert got.returncode == 0, got.stderr
    shaped_q, cleared = got.stdout.strip().splitlines()
    assert "tbf" in shaped_q and "rate 100Mbit" in shaped_q and "tbf" not in cleared
    assert host_state() == before  # the host's loopback, interfaces and named namespaces as they were


@needs_namespace
def test_netem_adds_its_delay_where_the_kernel_has_it():
    got = inside("from distid.experiments.communication import netns\n"
                 "lo = netns.Loopback(); lo.up(); print(lo.has_netem())")
    assert got.returncode == 0, got.stderr
    if got.stdout.strip() != "True":
        pytest.skip(f"{NETEM_GATE}: this kernel has no sch_netem, so latency stays in the model")
    code = ("import socket, time\nfrom distid.experiments.communication import netns\n"
            "lo = netns.Loopback(); lo.up(); lo.shape(None, 0.02)\n"
            "srv = socket.create_server(('127.0.0.1', 0)); c = socket.create_connection(srv.getsockname())\n"
            "s, _ = srv.accept(); t = time.perf_counter(); c.sendall(b'x'); s.recv(1); s.sendall(b'y'); c.recv(1)\n"
            "print(time.perf_counter() - t)")
    got = inside(code)
    assert got.returncode == 0, got.stderr
    assert float(got.stdout) >= 0.04  # there and back: 20 ms each way


def shaped_cmd(out, *extra) -> list[str]:
    return [sys.executable, "-m", "distid.experiments.communication.shaped", "--config", "configs/mnist_frontier.toml",
            "--set", f"data.root={DATA_ROOT}", "--nproc", "2", "--cells", "DDP", "--fit-sizes", "16384,262144",
            "--out", str(out), *extra]


@needs_namespace
@pytest.mark.skipif(not have_mnist(), reason="MNIST not fetched (python -m distid.data fetch mnist)")
@pytest.mark.parametrize("topology,queues", [("shared", 1), ("per-node", 2)])
def test_a_shaped_step_is_no_faster_than_its_bytes_allow(tmp_path, topology, queues):
    """At 40 Mb/s a DDP step of the MLP on 2 ranks moves S = 796,840 B from each rank: through one
    queue (shared) both ranks' bytes, 2·S; through a link per rank (per-node) S each, side by side."""
    rate = 40e6
    got = run(shaped_cmd(tmp_path, "--rates", "40mbit", "--topology", topology, "--set", "train.steps=16",
                         "--set", "train.eval_every=8"), 240)
    assert got.returncode == 0, got.stdout[-2000:] + got.stderr[-3000:]
    res = json.loads((tmp_path / "shaped.json").read_text())
    assert res["meta"]["topology"] == topology and [r["rate"] for r in res["rows"]] == [None, rate]
    slow = res["rows"][1]
    assert slow["wire_bytes_per_step"] == 796_840  # 2 ranks: a rank sends S
    # tbf keeps its rate to about 1 % (a plain socket measured 101 Mbit/s at rate 100mbit): 3 % allowed
    assert slow["step_time_s"] >= 0.97 * 2 / queues * slow["wire_bytes_per_step"] / (rate / 8)
    assert slow["interface_bytes_per_step"] >= slow["wire_bytes_per_step"]
    assert {"shaped.md", "shaped.png"} <= {p.name for p in tmp_path.iterdir()}


@needs_namespace
@pytest.mark.skipif(not have_mnist(), reason="MNIST not fetched (python -m distid.data fetch mnist)")
@pytest.mark.parametrize("topology", ["shared", "per-node"])
def test_ctrl_c_leaves_no_process_namespace_interface_or_qdisc(tmp_path, topology):
    before = host_state()
    proc = start(shaped_cmd(tmp_path, "--rates", "10mbit", "--topology", topology, "--fit-sizes", "16384",
                            "--set", "train.steps=400"))
    slow = tmp_path / "DDP" / "10Mbs" / "torchrun.log"
    deadline = time.monotonic() + 180
    while not (slow.exists() and "every" in slow.read_text()) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)  # until the run on the shaped link is training
    assert proc.poll() is None, proc.communicate()
    os.kill(proc.pid, signal.SIGINT)  # the driver only: the rest must follow
    got = finish(proc, 90)
    assert got.returncode == 130, got.stderr[-3000:]
    time.sleep(1)
    left = subprocess.run(["pgrep", "-af", f"{tmp_path}|sleep infinity"], capture_output=True, text=True).stdout.strip()
    assert left == "", f"processes left behind:\n{left}"
    assert host_state() == before  # no named namespace, no interface (veth, bridge), the loopback's qdisc as it was
