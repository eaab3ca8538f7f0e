"""A slow network on one machine: private network namespaces whose links are shaped by `tc`.

    argv = enter(["python", "-m", "...", ...])    # the command, run inside a namespace of its own
    with SharedLoopback(4) as net:                 # inside it: the ranks' network (or Nodes(4))
        net.shape(100e6)                           # tc's token bucket (tbf) at 100 Mbit/s; None: unshaped
        for argv, env in net.commands(["-m", "distid.train", ...]): ...   # torchrun(s) to start
        net.tx_bytes()                             # bytes its interfaces have sent

`enter` prefixes `unshare -n` (root) or `unshare -rn` (anyone, where the kernel lets an ordinary
user make user namespaces), with a PID namespace of its own (`--pid --fork --mount-proc
--kill-child`): the command is its PID 1, and when it exits — done, failed, interrupted or killed —
the kernel kills every process started in it, and the network namespaces, which have no name and
hold only those processes, go with them, every interface and qdisc in them. `run_entered` starts
`unshare` so that it is killed when its caller dies (PR_SET_PDEATHSIG), and `--kill-child` passes
that on. Nothing on the host's own interfaces is touched: every `ip` and `tc` here refuses to run
unless this process's network and PID namespaces both differ from those `run_entered` was called in.

Two networks: `SharedLoopback` — every rank on the namespace's loopback, one queue for all their
bytes (a shared medium, like a hub); `Nodes` — a namespace per rank, each behind its own veth pair
to a bridge (one link per worker, like a switch), both ends shaped.

tc's `tbf` limits the rate; added latency needs `netem` (`tc qdisc … netem delay`), a module some
kernels lack: `has_netem()` says, and without it latency stays in the model.
"""

from __future__ import annotations

import os
import ctypes
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from distid.config import ConfigError

UNITS = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "tbit": 1e12,
         "bps": 8, "kbps": 8e3, "mbps": 8e6, "gbps": 8e9}  # tc's units: bits, or bytes ("bps") per second
TOOLS = {"unshare": "util-linux", "nsenter": "util-linux", "ip": "iproute2", "tc": "iproute2"}
ALIASES = {"kb/s": "kbit", "mb/s": "mbit", "gb/s": "gbit"}  # as this module prints rates
USERNS_SETTINGS = (  # (sysctl, the value that forbids an ordinary user's namespaces, what to set)
    ("kernel.unprivileged_userns_clone", lambda v: v == "0", "1"),  # Debian's and Ubuntu's kernels
    ("kernel.apparmor_restrict_unprivileged_userns", lambda v: v == "1", "0"),  # Ubuntu 23.10 on
    ("user.max_user_namespaces", lambda v: v == "0", "a number above 0"),
)
INSIDE = "DISTID_NETNS"  # the caller's network and PID namespaces, in the environment of what `run_entered` starts
STOP_S = 20  # seconds processes may take to stop after SIGTERM before they are killed
MTU = 1500  # every interface here, the loopback too: Ethernet's frames, not the loopback's 64 KiB


def parse_rate(text: str) -> float | None:
    """'100mbit' → 1e8 (bits per second; tc's units), 'none' → None (not shaped); ConfigError otherwise."""
    t = text.strip().lower()
    if t in ("none", "unshaped"):
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z/]+)", t)
    unit = m and ALIASES.get(m.group(2), m.group(2))
    if not m or unit not in UNITS or float(m.group(1)) <= 0:
        raise ConfigError(f"rate {text!r}: write a number and one of tc's units ({', '.join(UNITS)}), "
                          "for example 100mbit or 1gbit (bps: bytes per second), or 'none' for an unshaped network")
    return float(m.group(1)) * UNITS[unit]


def parse_delay(text: str) -> float:
    """'20ms' → 0.02 (seconds; s, ms or us), '0' → 0.0; ConfigError otherwise."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|ms|us)?", text.strip().lower())
    if not m or (float(m.group(1)) > 0 and not m.group(2)):
        raise ConfigError(f"delay {text!r}: write a number and s, ms or us, for example 20ms (0: none)")
    return float(m.group(1)) * {"s": 1.0, "ms": 1e-3, "us": 1e-6, None: 0.0}[m.group(2)]


def rate_name(bits: float | None) -> str:
    """1e8 → '100 Mb/s'; None → 'unshaped'."""
    if bits is None:
        return "unshaped"
    for unit, scale in (("Gb/s", 1e9), ("Mb/s", 1e6), ("kb/s", 1e3)):
        if bits >= scale:
            return f"{bits / scale:g} {unit}"
    return f"{bits:g} b/s"


def check_tools() -> None:
    """ConfigError naming the package of the first missing tool."""
    for tool, package in TOOLS.items():
        if shutil.which(tool) is None:
            raise ConfigError(f"`{tool}` is not installed: install the {package} package "
                              f"(Debian/Ubuntu: apt install {package})")


def unshare_argv() -> list[str]:
    """`unshare -n` for root; `unshare -rn` (a user namespace, root inside it) for anyone else."""
    return ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-rn"]


def _blocking_settings() -> list[str]:
    """The user-namespace sysctls of this kernel set to a value that forbids them, with what to set."""
    found = []
    for name, forbids, want in USERNS_SETTINGS:
        path = Path("/proc/sys") / name.replace(".", "/")
        try:
            value = path.read_text().strip()
        except OSError:
            continue
        if forbids(value):
            found.append(f"{name} is {value} (set {want})")
    return found


def enter(argv: list[str]) -> list[str]:
    """The command line that runs argv as PID 1 of new, private network and PID namespaces."""
    return [*unshare_argv(), "--pid", "--fork", "--mount-proc", "--kill-child", "--", *argv]


def check_namespace() -> None:
    """ConfigError in one line, saying what to do, unless namespaces as `enter` makes them can be made here."""
    check_tools()
    probe = subprocess.run(enter(["ip", "link", "set", "lo", "up"]), capture_output=True, text=True)
    if probe.returncode == 0:
        return
    why = (probe.stderr.strip().splitlines() or ["failed"])[-1]
    blocking = _blocking_settings()
    raise ConfigError(f"cannot make a private network namespace here ({why}): run as root, or let ordinary users "
                      "make user namespaces — " + ("; ".join(blocking) if blocking else
                      "sysctl kernel.unprivileged_userns_clone=1 (Debian, Ubuntu), "
                      "kernel.apparmor_restrict_unprivileged_userns=0 (Ubuntu 23.10 on), "
                      "user.max_user_namespaces above 0"))


def _netns(pid: int | str = "self") -> str:
    return os.readlink(f"/proc/{pid}/ns/net")


def _namespaces() -> str:
    """This process's network and PID namespaces, as /proc names them."""
    return f"{_netns()} {os.readlink('/proc/self/ns/pid')}"


def inside() -> bool:
    """True in a process that `run_entered` started (or its children): in network and PID namespaces
    other than both of those it was started from."""
    made_from = os.environ.get(INSIDE, "").split()
    return len(made_from) == 2 and not set(made_from) & set(_namespaces().split())


def _die_with(parent: int):
    """In a child before exec: SIGKILL when `parent` dies (Linux's PR_SET_PDEATHSIG), at once if it
    already has."""
    def arm() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(1)
    return arm


def run_entered(argv: list[str]) -> int:
    """argv under `enter`, killed if this process dies; its exit code. The first SIGINT or SIGTERM
    here is passed on to it, which then has STOP_S and a few seconds more to end before it is
    killed (and everything in its namespaces with it); 130 then."""
    stop_on_signals()
    proc = subprocess.Popen(enter(argv), env={**os.environ, INSIDE: _namespaces()}, start_new_session=True,
                            preexec_fn=_die_with(os.getpid()))
    try:
        return proc.wait()
    except KeyboardInterrupt:
        try:
            os.killpg(proc.pid, signal.SIGINT)  # unshare ignores it; the command, in its process group, does not
            proc.wait(STOP_S + 10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        stop_all([proc])
        return 130


def stop_on_signals() -> None:
    """The first SIGINT or SIGTERM raises KeyboardInterrupt; later ones are ignored, so the clean-up runs whole."""
    def interrupt(signum, frame):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)


def start(argv: list[str], env: dict, log: Path) -> subprocess.Popen:
    """argv in a session of its own (so that it stops with every process it starts), output to log."""
    with open(log, "w") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **env})


def stop_all(procs: list[subprocess.Popen]) -> None:
    """SIGTERM to each process group, STOP_S for all of them together, then SIGKILL to every group
    (a torchrun that has exited may have left ranks behind)."""
    def each(sig):
        for p in procs:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
    each(signal.SIGTERM)
    deadline = time.monotonic() + STOP_S
    for p in procs:
        try:
            p.wait(max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            pass
    each(signal.SIGKILL)
    for p in procs:
        p.wait()


def _run(argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
    """An `ip`, `tc` or `nsenter` command, only ever inside a namespace `run_entered` made."""
    if not inside():
        raise RuntimeError("distid changes interfaces only inside namespaces it made (netns.run_entered); "
                           f"refusing to run {' '.join(argv)} here")
    out = subprocess.run(argv, capture_output=True, text=True)
    if check and out.returncode:
        raise RuntimeError(f"{' '.join(argv)}: {' '.join(out.stderr.split())}")
    return out


def tx_bytes(dev: str, pid: int | str = "self") -> int:
    """Bytes `dev` has sent, in the network namespace of process `pid` (/proc/PID/net/dev is that
    process's namespace's; /sys/class/net is the namespace's that mounted it: the host's)."""
    for line in Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]:
        name, _, fields = line.partition(":")
        if name.strip() == dev:
            return int(fields.split()[8])
    raise RuntimeError(f"no interface {dev} in the network namespace of process {pid}")


class Device:
    """One interface's root qdisc, in this namespace or, through nsenter, in process `pid`'s."""

    def __init__(self, dev: str, pid: int | None = None):
        self.dev, self.pid = dev, pid

    def cmd(self, *argv: str) -> list[str]:
        return [*(["nsenter", "-t", str(self.pid), "-n", "--"] if self.pid else []), *argv]

    def tc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return _run(self.cmd("tc", *args), check)

    def clear(self) -> None:
        """No qdisc of ours: the interface as fast as the machine moves bytes."""
        self.tc("qdisc", "del", "dev", self.dev, "root", check=False)

    def shape(self, bits_per_s: float | None, delay_s: float = 0.0) -> None:
        """tbf at bits_per_s, behind netem's delay when delay_s > 0 (needs netem); None and no delay:
        cleared. Like a NIC, the link passes no burst: the bucket holds two Ethernet frames (MTU, as
        every interface here, 1,500 B), or 0.1 ms of the rate when that is more (from 248 Mbit/s;
        12.5 kB at 1 Gbit/s), so that a link idle a moment still sends a message at its rate; the
        queue holds 0.25 s of the rate (at least 1 MiB), so that TCP is slowed, not dropped. TCP
        hands the loopback 64 KiB segments (GSO); tbf cuts them into frames."""
        self.clear()
        if delay_s > 0:
            self.tc("qdisc", "add", "dev", self.dev, "root", "handle", "1:", "netem", "delay", f"{delay_s * 1e6:.0f}us",
                    "limit", "100000")  # packets in flight: netem's default of 1,000 drops at 1 Gbit/s and 20 ms
        if bits_per_s is None:
            return
        burst, limit = max(2 * (MTU + 50), int(bits_per_s / 8 * 1e-4)), max(2**20, int(bits_per_s / 8 * 0.25))
        where = ["parent", "1:"] if delay_s > 0 else ["root"]
        self.tc("qdisc", "add", "dev", self.dev, *where, "handle", "2:", "tbf", "rate", f"{bits_per_s:.0f}bit",
                "burst", str(burst), "limit", str(limit))

    def has_netem(self) -> bool:
        """Whether this kernel offers netem (tried on this interface, then removed)."""
        self.clear()
        ok = self.tc("qdisc", "add", "dev", self.dev, "root", "netem", "delay", "1ms", check=False).returncode == 0
        self.clear()
        return ok

    def qdisc(self) -> str:
        return self.tc("qdisc", "show", "dev", self.dev).stdout.strip()

    def tx_bytes(self) -> int:
        return tx_bytes(self.dev, self.pid or "self")


class Loopback(Device):
    """The loopback of the namespace this process is in (only ever one made by `enter`)."""

    def __init__(self):
        super().__init__("lo")

    def up(self) -> None:
        _run(["ip", "link", "set", "lo", "mtu", str(MTU), "up"])


def rank_threads(n: int) -> dict:
    """The environment that gives each of n ranks on this machine its cores ÷ n intra-op threads, on
    either network (as runtime.share_cores does for the ranks of one torchrun)."""
    return {"OMP_NUM_THREADS": str(max(1, len(os.sched_getaffinity(0)) // n)), "DISTID_THREADS": ""}


def torchrun(argv: list[str], nproc: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *argv]


class SharedLoopback:
    """Every rank on this namespace's loopback: one queue for all their bytes (a shared medium, a hub)."""

    topology = "shared"
    words = "a shared medium — one loopback shaped by tc's tbf, every rank's bytes through one queue"

    def __init__(self, n: int):
        self.n, self.lo = n, Loopback()

    def __enter__(self):
        self.lo.up()
        return self

    def __exit__(self, *exc):
        self.lo.clear()

    def has_netem(self) -> bool:
        return self.lo.has_netem()

    def shape(self, bits_per_s: float | None, delay_s: float = 0.0) -> None:
        self.lo.shape(bits_per_s, delay_s)

    def commands(self, module_argv: list[str]) -> list[tuple[list[str], dict]]:
        """(argv, environment additions) of the processes that run module_argv on n ranks."""
        return [(torchrun(module_argv, self.n), rank_threads(self.n))]

    def tx_bytes(self) -> int:
        return self.lo.tx_bytes()


class Nodes:
    """n nodes of one rank each: a namespace per node (a child `unshare -n sleep`), each behind its own
    veth pair to a bridge in this namespace — one link per worker, as through a switch. Each node's
    uplink and downlink are shaped at the rate. The nodes' namespaces go with their sleeping
    processes (`__exit__`, or the kernel when this PID namespace's first process ends); the bridge
    with this namespace. At most 253 nodes (one /24)."""

    topology = "per-node"
    words = "one link per worker — a namespace per rank, each behind its own veth shaped by tc's tbf (both ways), joined by a bridge"
    BRIDGE, SUBNET, PORT = "distid-br", "10.77.0", 29400

    def __init__(self, n: int):
        self.n, self.procs = n, []

    def node(self, i: int) -> str:
        return f"distid-n{i}"

    def addr(self, i: int) -> str:
        return f"{self.SUBNET}.{i + 1}"

    def __enter__(self):
        _run(["ip", "link", "set", "lo", "up"])
        try:
            for i in range(self.n):
                self.procs.append(subprocess.Popen(["unshare", "-n", "--", "sleep", "infinity"]))
                self._wait_for_namespace(self.procs[-1])
            _run(["ip", "link", "add", self.BRIDGE, "type", "bridge"])
            _run(["ip", "link", "set", self.BRIDGE, "up"])
            for i, proc in enumerate(self.procs):
                hub = f"distid-h{i}"
                _run(["ip", "link", "add", hub, "type", "veth", "peer", "name", self.node(i), "netns", str(proc.pid)])
                _run(["ip", "link", "set", hub, "master", self.BRIDGE, "up"])
                dev = Device(self.node(i), proc.pid)
                _run(dev.cmd("ip", "addr", "add", f"{self.addr(i)}/24", "dev", self.node(i)))
                _run(dev.cmd("ip", "link", "set", self.node(i), "up"))
                _run(dev.cmd("ip", "link", "set", "lo", "up"))
        except BaseException:
            self.__exit__()
            raise
        return self

    @staticmethod
    def _wait_for_namespace(proc: subprocess.Popen, timeout: float = 10) -> None:
        """Until `unshare -n` has given proc a network namespace of its own."""
        own, deadline = _netns(), time.monotonic() + timeout
        while True:
            try:
                if _netns(proc.pid) != own:
                    return
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("unshare -n could not make a node's network namespace")
            time.sleep(0.01)

    def __exit__(self, *exc):
        if self.procs:  # a veth pair goes with either end; a namespace's own end only when the kernel gets to it
            for i in range(len(self.procs)):
                _run(["ip", "link", "del", f"distid-h{i}"], check=False)
            _run(["ip", "link", "del", self.BRIDGE], check=False)
        for proc in self.procs:
            proc.kill()
            proc.wait()

    def devices(self) -> list[Device]:
        """Each node's uplink (its veth end, in its namespace) and downlink (the bridge's end, here)."""
        return [d for i, p in enumerate(self.procs) for d in (Device(self.node(i), p.pid), Device(f"distid-h{i}"))]

    def has_netem(self) -> bool:
        return self.devices()[0].has_netem()

    def shape(self, bits_per_s: float | None, delay_s: float = 0.0) -> None:
        for i, dev in enumerate(self.devices()):
            dev.shape(bits_per_s, delay_s if i % 2 == 0 else 0.0)  # a packet's delay once, on its sender's uplink

    def commands(self, module_argv: list[str]) -> list[tuple[list[str], dict]]:
        """One torchrun per node, in its namespace, rank i on node i; gloo on the node's veth; each
        rank with this machine's cores ÷ n intra-op threads, as n ranks of one torchrun take them
        (runtime.share_cores: a torchrun of one rank would take them all, n times over)."""
        return [(Device(self.node(i), p.pid).cmd(*torchrun(module_argv, 1)[:3], f"--nnodes={self.n}",
                                                 "--nproc_per_node=1", f"--node_rank={i}",
                                                 f"--master_addr={self.addr(0)}", f"--master_port={self.PORT}",
                                                 *module_argv),
                 {"GLOO_SOCKET_IFNAME": self.node(i), **rank_threads(self.n)})
                for i, p in enumerate(self.procs)]

    def tx_bytes(self) -> int:
        """Bytes every node sent on its uplink."""
        return sum(tx_bytes(self.node(i), p.pid) for i, p in enumerate(self.procs))


TOPOLOGIES = {"shared": SharedLoopback, "per-node": Nodes}
