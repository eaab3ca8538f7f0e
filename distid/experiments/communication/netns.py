"""A slow network on one machine: private network namespaces whose links are shaped by `tc`.

    argv = enter(["python", "-m", "...", ...])    # the command, run inside a namespace of its own
    with SharedLoopback(4) as net:                 # inside it: the ranks' network (or Nodes(4))
        net.shape(100e6)                           # tc's token bucket (tbf) at 100 Mbit/s; None: unshaped
        for argv, env in net.commands(["-m", "distid.train", ...]): ...   # torchrun(s) to start
        net.tx_bytes()                             # bytes its interfaces have sent

`enter` prefixes `unshare -n` (root) or `unshare -rn` (anyone, where the kernel lets an ordinary
user make user namespaces). The namespace has no name and holds nothing but the processes started
in it: when the last of them exits, it goes, with every interface and qdisc in it, whatever ended
them. Nothing on the host's own interfaces is touched: the classes here refuse to run outside it.

Two networks: `SharedLoopback` — every rank on the namespace's loopback, one queue for all their
bytes (a shared medium, like a hub); `Nodes` — a namespace per rank, each behind its own veth pair
to a bridge (one link per worker, like a switch), both ends shaped.

tc's `tbf` limits the rate; added latency needs `netem` (`tc qdisc … netem delay`), a module some
kernels lack: `has_netem()` says, and without it latency stays in the model.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from distid.config import ConfigError

UNITS = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "tbit": 1e12,
         "bps": 8, "kbps": 8e3, "mbps": 8e6, "gbps": 8e9}  # tc's units: bits, or bytes ("bps") per second
TOOLS = {"unshare": "util-linux", "ip": "iproute2", "tc": "iproute2"}
USERNS_SETTINGS = (  # (sysctl, the value that forbids an ordinary user's namespaces, what to set)
    ("kernel.unprivileged_userns_clone", lambda v: v == "0", "1"),  # Debian's and Ubuntu's kernels
    ("kernel.apparmor_restrict_unprivileged_userns", lambda v: v == "1", "0"),  # Ubuntu 23.10 on
    ("user.max_user_namespaces", lambda v: v == "0", "a number above 0"),
)
INSIDE = "DISTID_NETNS"  # set in the environment of what runs inside a namespace made here


def parse_rate(text: str) -> float | None:
    """'100mbit' → 1e8 (bits per second; tc's units), 'none' → None (not shaped); ConfigError otherwise."""
    t = text.strip().lower()
    if t in ("none", "unshaped"):
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z]+)", t)
    if not m or m.group(2) not in UNITS or float(m.group(1)) <= 0:
        raise ConfigError(f"rate {text!r}: write a number and one of tc's units ({', '.join(UNITS)}), "
                          "for example 100mbit or 1gbit, or 'none' for an unshaped loopback")
    return float(m.group(1)) * UNITS[m.group(2)]


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


def check_namespace() -> None:
    """ConfigError in one line, saying what to do, unless a namespace with its loopback up can be made here."""
    check_tools()
    probe = subprocess.run([*unshare_argv(), "--", "ip", "link", "set", "lo", "up"], capture_output=True, text=True)
    if probe.returncode == 0:
        return
    why = (probe.stderr.strip().splitlines() or ["failed"])[-1]
    blocking = _blocking_settings()
    raise ConfigError(f"cannot make a private network namespace here ({why}): run as root, or let ordinary users "
                      "make user namespaces — " + ("; ".join(blocking) if blocking else
                      "sysctl kernel.unprivileged_userns_clone=1 (Debian, Ubuntu), "
                      "kernel.apparmor_restrict_unprivileged_userns=0 (Ubuntu 23.10 on), "
                      "user.max_user_namespaces above 0"))


def enter(argv: list[str]) -> list[str]:
    """The command line that runs argv in a new, private network namespace."""
    return [*unshare_argv(), "--", *argv]


def inside() -> bool:
    """True in a process started by `enter` (its environment says so; set by the caller)."""
    return os.environ.get(INSIDE) == "1"


def _run(argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(argv, capture_output=True, text=True)
    if check and out.returncode:
        raise RuntimeError(f"{' '.join(argv)}: {out.stderr.strip()}")
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
        """tbf at bits_per_s (burst ≥ 256 KiB and 4 ms of the rate; queue ≤ 50 ms), behind netem's delay
        when delay_s > 0 (needs netem); None and no delay: cleared."""
        self.clear()
        if delay_s > 0:
            self.tc("qdisc", "add", "dev", self.dev, "root", "handle", "1:", "netem", "delay", f"{delay_s * 1e6:.0f}us")
        if bits_per_s is None:
            return
        burst = max(256 * 1024, int(bits_per_s / 8 * 4e-3))
        where = ["parent", "1:"] if delay_s > 0 else ["root"]
        self.tc("qdisc", "add", "dev", self.dev, *where, "handle", "2:", "tbf", "rate", f"{bits_per_s:.0f}bit",
                "burst", str(burst), "latency", "50ms")

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


def _refuse_outside() -> None:
    if not inside():
        raise RuntimeError("distid shapes only a namespace made by netns.enter; refusing to touch this one")


class Loopback(Device):
    """The loopback of the namespace this process is in (only ever one made by `enter`)."""

    def __init__(self):
        super().__init__("lo")

    def up(self) -> None:
        _refuse_outside()
        _run(["ip", "link", "set", "lo", "up"])


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
        return [(torchrun(module_argv, self.n), {})]

    def tx_bytes(self) -> int:
        return self.lo.tx_bytes()


class Nodes:
    """n nodes of one rank each: a namespace per node (a child `unshare -n sleep`), each behind its own
    veth pair to a bridge in this namespace — one link per worker, as through a switch. Each node's
    uplink and downlink are shaped at the rate. The nodes' namespaces go with their sleeping
    processes (`__exit__`, or this process's end); the bridge with this namespace."""

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
        _refuse_outside()
        _run(["ip", "link", "set", "lo", "up"])
        own = os.readlink("/proc/self/ns/net")
        try:
            for i in range(self.n):
                proc = subprocess.Popen(["unshare", "-n", "--", "sleep", "infinity"], start_new_session=True)
                self.procs.append(proc)
                deadline = time.monotonic() + 10
                while os.readlink(f"/proc/{proc.pid}/ns/net") == own:  # until unshare has made it
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("unshare -n could not make a node's namespace")
                    time.sleep(0.01)
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

    def __exit__(self, *exc):
        for proc in self.procs:
            proc.kill()
            proc.wait()
        _run(["ip", "link", "del", self.BRIDGE], check=False)

    def devices(self) -> list[Device]:
        """Each node's uplink (its veth end, in its namespace) and downlink (the bridge's end, here)."""
        return [d for i, p in enumerate(self.procs) for d in (Device(self.node(i), p.pid), Device(f"distid-h{i}"))]

    def has_netem(self) -> bool:
        return self.devices()[0].has_netem()

    def shape(self, bits_per_s: float | None, delay_s: float = 0.0) -> None:
        for i, dev in enumerate(self.devices()):
            dev.shape(bits_per_s, delay_s if i % 2 == 0 else 0.0)  # a packet's delay once, on its sender's uplink

    def commands(self, module_argv: list[str]) -> list[tuple[list[str], dict]]:
        """One torchrun per node, in its namespace, rank i on node i; gloo on the node's veth."""
        return [(Device(self.node(i), p.pid).cmd(*torchrun(module_argv, 1)[:3], f"--nnodes={self.n}",
                                                 "--nproc_per_node=1", f"--node_rank={i}",
                                                 f"--master_addr={self.addr(0)}", f"--master_port={self.PORT}",
                                                 *module_argv),
                 {"GLOO_SOCKET_IFNAME": self.node(i)}) for i, p in enumerate(self.procs)]

    def tx_bytes(self) -> int:
        """Bytes every node sent on its uplink."""
        return sum(tx_bytes(self.node(i), p.pid) for i, p in enumerate(self.procs))


TOPOLOGIES = {"shared": SharedLoopback, "per-node": Nodes}
