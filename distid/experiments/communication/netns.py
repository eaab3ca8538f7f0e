"""A slow network on one machine: a private network namespace whose loopback is shaped by `tc`.

    argv = enter(["python", "-m", "...", ...])   # the command, run inside a namespace of its own
    lo = Loopback(); lo.up()                      # inside it: its loopback starts down
    lo.shape(100e6)                               # token bucket (tbf) at 100 Mbit/s; lo.shape(None): as fast as it goes
    lo.tx_bytes()                                 # bytes the namespace's loopback has sent

`enter` prefixes `unshare -n` (root) or `unshare -rn` (anyone, where the kernel lets an ordinary
user make user namespaces). The namespace has no name and holds nothing but the processes started
in it: when the last of them exits, it goes, its loopback and qdisc with it, whatever ended them.
Nothing on the host's own interfaces is touched. Every rank's traffic crosses the one shaped
loopback: a shared medium (experiments/communication/links.py, `shared_medium_s`).

tc's `tbf` limits the rate; added latency needs `netem` (`tc qdisc … netem delay`), a module some
kernels lack: `has_netem()` says, and without it latency stays in the model.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import psutil

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


def _tc(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(["tc", *args], capture_output=True, text=True)
    if check and out.returncode:
        raise RuntimeError(f"tc {' '.join(args)}: {out.stderr.strip()}")
    return out


class Loopback:
    """The loopback of the namespace this process is in (only ever one made by `enter`)."""

    dev = "lo"

    def up(self) -> None:
        if not inside():
            raise RuntimeError("Loopback shapes only a namespace made by netns.enter; refusing to touch this one")
        subprocess.run(["ip", "link", "set", self.dev, "up"], check=True, capture_output=True)

    def clear(self) -> None:
        """No qdisc of ours: the loopback as fast as the machine moves bytes."""
        _tc("qdisc", "del", "dev", self.dev, "root", check=False)

    def shape(self, bits_per_s: float | None, delay_s: float = 0.0) -> None:
        """tbf at bits_per_s (burst ≥ 256 KiB and 4 ms of the rate; queue ≤ 50 ms), behind netem's delay
        when delay_s > 0 (needs netem); None: cleared."""
        self.clear()
        if delay_s > 0:
            _tc("qdisc", "add", "dev", self.dev, "root", "handle", "1:", "netem", "delay", f"{delay_s * 1e6:.0f}us")
        if bits_per_s is None:
            return
        burst = max(256 * 1024, int(bits_per_s / 8 * 4e-3))
        where = ["parent", "1:"] if delay_s > 0 else ["root"]
        _tc("qdisc", "add", "dev", self.dev, *where, "handle", "2:", "tbf", "rate", f"{bits_per_s:.0f}bit",
            "burst", str(burst), "latency", "50ms")

    def has_netem(self) -> bool:
        """Whether this kernel offers netem (tried on this loopback, then removed)."""
        self.clear()
        ok = _tc("qdisc", "add", "dev", self.dev, "root", "netem", "delay", "1ms", check=False).returncode == 0
        self.clear()
        return ok

    def qdisc(self) -> str:
        return _tc("qdisc", "show", "dev", self.dev).stdout.strip()

    def tx_bytes(self) -> int:
        """Bytes sent on this namespace's loopback (/proc/net/dev is the reading process's namespace's;
        /sys/class/net is the namespace's that mounted it, the host's)."""
        return psutil.net_io_counters(pernic=True)[self.dev].bytes_sent
