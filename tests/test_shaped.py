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
from pathlib import Path

import pytest

from datasets_for_tests import DATA_ROOT, have_mnist
from distid.config import ConfigError
from distid.experiments.communication import frontier, link_fit, links, netns, shaped
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
    """Python `code` run in namespaces made by netns.enter, as run_entered starts it; this repository importable."""
    here = netns._namespaces()
    return run(netns.enter([sys.executable, "-c", code]), timeout, user_env(**{netns.INSIDE: here, "PYTHONPATH": REPO}))


def marked(mark: str) -> list[str]:
    """Processes whose environment holds `mark` (every process a run starts inherits it)."""
    found = []
    for environ in __import__("glob").glob("/proc/[0-9]*/environ"):
        try:
            if mark.encode() in open(environ, "rb").read():
                found.append(open(environ.replace("environ", "cmdline"), "rb").read().replace(b"\0", b" ").decode())
        except OSError:
            pass
    return found


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


def test_nothing_is_shaped_outside_a_namespace_it_made(monkeypatch):
    monkeypatch.delenv(netns.INSIDE, raising=False)
    with pytest.raises(RuntimeError, match="refusing to run ip link set lo mtu 1500 up here"):
        netns.Loopback().up()
    monkeypatch.setenv(netns.INSIDE, netns._namespaces())  # inherited, but still the same namespaces
    with pytest.raises(RuntimeError, match="refusing to run tc qdisc del dev lo root here"):
        netns.Loopback().clear()
    net, pid = netns._namespaces().split()
    monkeypatch.setenv(netns.INSIDE, f"net:[1] {pid}")  # a stale value: the PID namespace is still this one
    with pytest.raises(RuntimeError, match="refusing"):
        netns.Loopback().clear()
    with pytest.raises(RuntimeError, match="refusing"):
        netns.Nodes(2).__enter__()


def test_fit_sizes_targets_and_ranks_are_refused_before_any_work(tmp_path):
    for bad in ("16384", "16384,16384", "16384,1001", "a,b"):
        with pytest.raises(ConfigError, match="two or more distinct sizes"):
            shaped.fit_sizes(bad)
    assert shaped.fit_sizes("65536,16384") == [16384, 65536]
    for extra, said in ((["--targets", "0.9,1.5"], "each in (0, 1]"), (["--nproc", "1"], "use 2 or more"),
                        (["--fit-sizes", "4096"], "two or more distinct sizes"), (["--rates", "fast"], "tc's units")):
        got = run([sys.executable, "-m", "distid.experiments.communication.shaped", "--config",
                   "configs/mnist_frontier.toml", "--out", str(tmp_path), *extra], 60)
        assert got.returncode == 2 and said in got.stderr and len(got.stderr.strip().splitlines()) == 1, got.stderr
    assert not any(tmp_path.iterdir())  # refused before anything was made


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
def test_nodes_each_get_a_shaped_link_to_a_bridge_and_go_with_it():
    code = """
import os, subprocess
from distid.experiments.communication import netns
with netns.Nodes(2) as net:
    net.shape(1e8)
    print(sorted({d.qdisc().split()[1] for d in net.devices()}), len(net.devices()))
    print(subprocess.run(net.devices()[0].cmd("ip", "-o", "-4", "addr", "show", "distid-n0"), capture_output=True,
                         text=True).stdout.split()[3])
    held = {os.readlink(f"/proc/{p.pid}/ns/net") for p in net.procs}
print(any(os.readlink(p) in held for p in __import__("glob").glob("/proc/[0-9]*/ns/net")))
print(subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout.count("distid-"))
"""
    got = inside(code)
    assert got.returncode == 0, got.stderr
    qdiscs, bound, alive, links_left = got.stdout.strip().splitlines()
    assert qdiscs == "['tbf'] 4"  # each node's uplink and the bridge's port to it
    assert bound == "10.77.0.1/24"  # node 0's address, in its own namespace
    assert alive == "False" and links_left == "0"  # no process holds a node's namespace; veths and bridge gone


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
            "--set", f"data.root={DATA_ROOT}", "--nproc", "2", "--cells", "DDP", "--fit-sizes", "16384,65536",
            "--out", str(out), *extra]


@needs_namespace
@pytest.mark.skipif(not have_mnist(), reason="MNIST not fetched (python -m distid.data fetch mnist)")
def test_a_shaped_step_is_no_faster_than_its_bytes_through_the_shared_medium(tmp_path):
    """At 40 Mb/s a DDP step of the MLP on 2 ranks moves S = 796,840 B from each rank, through one
    queue: both ranks' bytes, 2·S. (A link per rank, per-node, runs in the lesson's tiny run in
    tests/test_docs.py and in the interrupted run below.)"""
    rate, topology, queues = 40e6, "shared", 1
    got = run(shaped_cmd(tmp_path, "--rates", "40mbit", "--set", "train.steps=16", "--set", "train.eval_every=8"), 240)
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
def test_ctrl_c_leaves_no_process_namespace_interface_or_qdisc(tmp_path):
    """Per-node: the network with the most to leave behind (a namespace per rank held by a process of
    its own, veth pairs, a bridge, a torchrun per node); the shared loopback's runs stop the same way."""
    topology = "per-node"
    before = host_state()
    mark = f"distid-test-{tmp_path.name}"
    proc = start(shaped_cmd(tmp_path, "--rates", "10mbit", "--topology", topology, "--set", "train.steps=400"),
                 user_env(DISTID_TEST_MARK=mark))
    slow = tmp_path / "fit" / "10Mbs.log"
    deadline = time.monotonic() + 180
    while not slow.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)  # until the ranks are timing all-reduces on the shaped link
    time.sleep(2)
    assert proc.poll() is None, proc.communicate()
    running = marked(mark)
    assert any("torch.distributed.run" in c for c in running), running  # what must be gone after
    os.kill(proc.pid, signal.SIGINT)  # the driver only: the rest must follow
    got = finish(proc, 90)
    assert got.returncode == 130, got.stderr[-3000:]
    time.sleep(1)
    assert marked(mark) == [], "processes left behind"  # distid, torchrun, the nodes' sleeps: each held a namespace
    assert host_state() == before  # no named namespace, no interface (veth, bridge), the loopback's qdisc as it was


def test_a_slower_link_makes_a_collective_take_the_longer_of_its_own_cost_and_the_bytes_time():
    base = dict(wire_bytes_per_step=1e6, comm_calls_per_step={"all_reduce": 1.0}, step_time_s=0.01, sync_period=1,
                eval_curve=[[10, 0.1, 0.5]], wire_setup_bytes=0.0, comm_steps_warmup=0, wire_warmup_bytes=0.0)
    unshaped, slow = dict(rank_bytes_per_s=1e9, alpha_s=1e-3), dict(rank_bytes_per_s=1e7)
    # unshaped a step's all-reduce took t0 = 2·3·1e-3 + 1e6/1e9 = 7 ms; the slow link needs 1e6/1e7 = 100 ms
    assert shaped.predict(base, slow, unshaped, 4, 0.0) == pytest.approx(0.01 + 0.1 - 0.007)
    assert shaped.predict(base, slow, unshaped, 4, 0.0, step=10) == pytest.approx(0.1 + 1.0 - 0.07)
    assert shaped.predict(base, slow, unshaped, 4, 0.002) == pytest.approx(0.103 + 6 * 0.002)  # netem absent
    assert shaped.predict(base, dict(rank_bytes_per_s=2e8), unshaped, 4, 0.0) == pytest.approx(0.01)  # 5 ms < t0
    assert shaped.predict(base, unshaped, unshaped, 4, 0.0) == pytest.approx(0.01)  # the unshaped run itself
    assert shaped.predict(dict(base, step_time_s=None), slow, unshaped, 4, 0.0) is None


def test_the_frontier_shows_a_shaped_run_beside_its_own_model():
    tiny = json.loads((Path(REPO) / "tests" / "shaped_tiny.json").read_text())
    row = dict(cell="DDP", family="DDP", to_target=[None, dict(step=7, wire_bytes=7 * 1.2e6)], calls_per_step={"all_reduce": 1},
               seeds=[dict(wire_setup_bytes=0.0)], compute_step_s=0.001)
    targets = [dict(fraction=0.95, accuracy=0.9), dict(fraction=0.90, accuracy=0.85)]
    md = links.measured_markdown([row], targets, 4, [tiny, dict(tiny, meta=dict(tiny["meta"], topology="per-node"))])
    lines = [x for x in md.splitlines() if x.startswith("| DDP |")]
    assert [x.split(" | ")[1] for x in lines] == ["one loopback (shared), N=2", "a link per rank, N=2"]
    fit = next(f for f in tiny["fits"] if f["rate"] is not None)  # this page's model on the network's own link:
    for line, rate in zip(lines, (fit["medium_bytes_per_s"], fit["rank_bytes_per_s"])):  # the medium, or a rank's
        want = links.time_to(row, 1, 4, 2, links.Link("x", 8 * rate, fit["alpha_s"], ""))
        assert line.split(" | ")[-1].strip(" |") == links._fmt(want)
    assert "| DiLoCo H=32 |" in md and "not in this frontier" in md  # a cell the frontier did not train


def test_the_frontier_refuses_a_shaped_file_it_cannot_read_before_it_trains(tmp_path):
    (tmp_path / "other.json").write_text('{"cells": []}')
    with pytest.raises(ConfigError, match=r"other.json: cannot read it \(no meta, fits, rows, targets: not a shaped"):
        frontier.load_shaped(f"{tmp_path / 'other.json'}")
    with pytest.raises(ConfigError, match="missing.json: cannot read it"):
        frontier.load_shaped(f"{REPO}/tests/shaped_tiny.json, {tmp_path / 'missing.json'}")


def test_one_alpha_for_every_link_and_a_rate_for_each():
    n, alpha, rates = 4, 3e-4, (2e9, 1.25e7)  # a rank's bytes per second on each link
    fits = [dict(world_size=n, rows=[dict(bytes=s, backend_ms=1e3 * (2 * (n - 1) * alpha + 1.5 * s / b))
                                     for s in (16384, 131072, 1048576)]) for b in rates]
    got = link_fit.joint(fits)
    assert [f["alpha_s"] for f in got] == pytest.approx([alpha, alpha])
    assert [f["rank_bytes_per_s"] for f in got] == pytest.approx(list(rates))
    assert got[1]["medium_bytes_per_s"] == pytest.approx(n * rates[1]) and got[1]["max_rel_error"] < 1e-9
    late = [dict(f, rows=[dict(r, backend_ms=r["backend_ms"] + 1e3 * 6 * 0.02) for r in f["rows"]]) if k else f
            for k, f in enumerate(fits)]  # netem delayed the second link 20 ms one way: 2(N−1) of them a call
    assert [f["alpha_s"] for f in link_fit.joint(late, [0.0, 0.02])] == pytest.approx([alpha, alpha])
    fast = [dict(f, rows=[dict(r, backend_ms=1e3 * (1.5 * r["bytes"] / b - 1e-6)) for r in f["rows"]])
            for f, b in zip(fits, rates)]  # times below the bandwidth's: α would come out negative
    assert [f["alpha_s"] for f in link_fit.joint(fast)] == [0.0, 0.0]
