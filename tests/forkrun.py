"""Run a test's `python -m distid…` and `torchrun --standalone --nproc_per_node=N -m distid…` commands
as forks of a process that has already imported torch.

Most of a tiny run's time is start-up: each rank imports torch and, at its first optimizer or object
collective, torch._dynamo (about 2 s of CPU a process, 4 ranks and torchrun's own agent per command),
and finalises them at exit. A fork server per pytest process imports them once (PRELOAD) and freezes
them for the collector (`gc.freeze`); each command is a launcher forked from it, in a session of its
own, which forks the ranks. A rank gets the environment torchrun gives its workers (`torchrun_env`;
tests/test_forkrun.py compares it with torchrun's own), unbuffered output as under torchrun's
`python -u`, the command's working folder, `sys.path` and `sys.argv` as `python -m` sets them, and
runs its module as `__main__`. As under torchrun, the first rank to fail stops the others (SIGTERM,
then SIGKILL after STOP_GRACE_S) and the command exits 1; a launcher whose test process is gone
stops its ranks.

What a fork does not give: each rank's own hash seed (they share the server's) and its own Python
start-up. So the tests that are about processes and torchrun itself use real ones: any torchrun
option beyond --standalone and --nproc_per_node (restarts, nodes, monitor interval), a command that
is not a distid module, an environment whose start-up variables (FIXED) differ from the server's,
every command off Linux or when DISTID_TEST_FORK=0, and what `procs.start` starts.
`procs.run` calls `run` here first and starts a real process when it answers None.
"""

from __future__ import annotations

import atexit
import gc
import importlib
import io
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

STOP_GRACE_S = 30  # torchrun's: SIGTERM to the other ranks, SIGKILL this long after
FIXED = ("PYTHON", "TORCH", "OMP_", "MKL_", "KMP_", "THP_", "LANG", "LC_")  # read at start-up: a request
# whose value differs from the server's runs as a real process
MODULES = ("distid.",)  # the modules a fork runs
PRELOAD = ("distid",  # first, as in every entry: it sets THP_MEM_ALLOC_ENABLE before torch allocates
           "torch", "torch._dynamo", "torch.distributed.checkpoint", "torch.utils.tensorboard",
           "distid.run.cli", "distid.run.job")  # what every rank imports; an entry module is run afresh


def enabled() -> bool:
    return sys.platform == "linux" and os.environ.get("DISTID_TEST_FORK", "1") != "0"


def parse(cmd: list[str], modules: tuple[str, ...] = MODULES) -> tuple[int, str, list[str]] | None:
    """(ranks, module, its arguments) of a command a fork can run: 0 ranks for a plain `python -m`."""
    if len(cmd) < 3 or cmd[0] != sys.executable or cmd[1] != "-m":
        return None
    if cmd[2] != "torch.distributed.run":
        return (0, cmd[2], cmd[3:]) if cmd[2].startswith(modules) else None
    words, nproc, standalone = cmd[3:], None, False
    while words and words[0] != "-m":
        word = words.pop(0)
        if word == "--standalone":
            standalone = True
        elif word.startswith(("--nproc_per_node=", "--nproc-per-node=")) and word.split("=", 1)[1].isdigit():
            nproc = int(word.split("=", 1)[1])
        else:
            return None  # restarts, nodes, a monitor interval, a script: torchrun itself runs it
    if not (standalone and nproc and len(words) >= 2 and words[1].startswith(modules)):
        return None
    return nproc, words[1], words[2:]


def torchrun_env(env: dict, rank: int, nproc: int, port: int, run_id: str) -> dict:
    """What torchrun --standalone --nproc_per_node=nproc sets for a worker, rank 0 holding the store
    (TORCHELASTIC_USE_AGENT_STORE=False, as with a static rendezvous: there is no agent)."""
    ranks = {"RANK": rank, "LOCAL_RANK": rank, "GROUP_RANK": 0, "ROLE_RANK": rank, "WORLD_SIZE": nproc,
             "LOCAL_WORLD_SIZE": nproc, "ROLE_WORLD_SIZE": nproc, "GROUP_WORLD_SIZE": 1}
    return {**env, **{k: str(v) for k, v in ranks.items()}, "ROLE_NAME": "default", "MASTER_ADDR": "localhost",
            "MASTER_PORT": str(port), "TORCHELASTIC_RUN_ID": run_id, "TORCHELASTIC_RESTART_COUNT": "0",
            "TORCHELASTIC_MAX_RESTARTS": "0", "TORCHELASTIC_USE_AGENT_STORE": "False",
            "TORCHELASTIC_SIGNALS_TO_HANDLE": "SIGTERM,SIGINT,SIGHUP,SIGQUIT", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
            "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1")}  # no TORCHELASTIC_ERROR_FILE: distid does
    # not record errors through torch.distributed.elastic


# ---- the server and what it forks (this file run as a script) ----

def serve(path: str):
    """Import torch, answer 'ready', then fork a launcher per request; returns (request, connection)
    in the launcher. Exits when its standard input closes (the pytest process that started it ended)."""
    for name in PRELOAD:
        importlib.import_module(name)
    if len(os.listdir("/proc/self/task")) != 1:
        sys.exit("the preload started a thread: forking it is not safe")
    gc.freeze()  # the preload's objects: no collection, and no finalisation at each rank's exit, scans them
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # launchers are reaped by the kernel
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(16)
    print("ready", flush=True)
    while True:
        for ready in select.select([listener, sys.stdin], [], [])[0]:
            if ready is sys.stdin:
                sys.exit(0)
            conn, _ = listener.accept()
            request = json.loads(conn.makefile().readline())
            if os.fork() == 0:
                listener.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                return request, conn
            conn.close()


def launch(request: dict, conn: socket.socket) -> tuple[dict, dict] | None:
    """In the launcher: fork the ranks, wait, send their exit code. Returns (request, env) in a rank."""
    os.setsid()
    conn.sendall(f"{os.getpid()}\n".encode())
    out, err = os.open(request["stdout"], os.O_WRONLY), os.open(request["stderr"], os.O_WRONLY)
    os.dup2(out, 1)
    os.dup2(err, 2)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    nproc, env = request["nproc"], request["env"]
    if nproc:
        with socket.socket() as s:
            s.bind(("localhost", 0))
            port = s.getsockname()[1]
        run_id = str(uuid.uuid4())
    ranks = set()
    for rank in range(max(nproc, 1)):
        pid = os.fork()
        if pid == 0:
            conn.close()
            return request, torchrun_env(env, rank, nproc, port, run_id) if nproc else env
        ranks.add(pid)
    code = wait(ranks, single=not nproc, client=conn)
    conn.sendall(f"{code}\n".encode())
    return None


def wait(ranks: set[int], single: bool, client: socket.socket) -> int:
    """Every rank's end; the first failure stops the others, and a client gone (the test process
    ended: its socket reads EOF) stops them all. A plain run's exit code is its own (−N: killed by
    signal N); torchrun's is 1 when any rank failed."""
    codes, stop_at = [], None
    while ranks:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            if stop_at is None and select.select([client], [], [], 0)[0]:
                stop_at = 0.0  # nobody waits for this run any more
            if stop_at is not None and time.monotonic() > stop_at:
                for p in ranks:
                    os.kill(p, signal.SIGKILL)
            time.sleep(0.02)
            continue
        ranks.discard(pid)
        codes.append(os.waitstatus_to_exitcode(status))
        if codes[-1] != 0 and stop_at is None:
            for p in ranks:
                os.kill(p, signal.SIGTERM)
            stop_at = time.monotonic() + STOP_GRACE_S
    if single:
        return codes[0]
    return 0 if not any(codes) else 1


def become(request: dict, env: dict, base_path: list[str]) -> None:
    """Turn this rank into `python -m MODULE ARGS` in the request's folder and environment."""
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(env)
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # what importing distid sets, for this rank's children
    extra = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:] = [request["cwd"], *extra, *base_path]
    sys.argv = [request["module"], *request["args"]]
    module = request["module"]
    sys.modules.pop(module + ".__main__", None)  # the code `python -m` runs as __main__ is not imported yet
    if not hasattr(sys.modules.get(module), "__path__"):  # a package stays imported, as under `python -m`
        sys.modules.pop(module, None)
    if request["nproc"]:  # torchrun starts its workers with `python -u`
        for name in ("stdout", "stderr"):
            old = getattr(sys, name)
            new = io.TextIOWrapper(io.FileIO(old.fileno(), "w", closefd=False), encoding=old.encoding,
                                   errors=old.errors, write_through=True)
            setattr(sys, name, new)
            setattr(sys, f"__{name}__", new)


# ---- the client: one server per pytest process ----

_server: dict = {}
_lock = threading.Lock()  # tests/test_docs.py runs two commands at once


def _start_server(env: dict, cwd: str) -> dict | None:
    """A server in `env` (without PYTHONPATH), in `cwd`; None, said once on stderr, if it cannot start."""
    folder = tempfile.mkdtemp(prefix="distid-fork-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = os.path.join(folder, "socket")
    env = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), path], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=env, cwd=cwd, text=True)
    atexit.register(_stop, proc)
    if select.select([proc.stdout], [], [], 120)[0] and proc.stdout.readline().strip() == "ready":
        return {"proc": proc, "path": path, "fixed": fixed(env)}
    _stop(proc)
    print("forkrun: the fork server did not start; commands run as real processes", file=sys.stderr)
    return None


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def fixed(env: dict) -> dict:
    return {k: v for k, v in env.items() if k.startswith(FIXED) and k != "PYTHONPATH"}


def server(env: dict, cwd: str) -> dict | None:
    """This process's fork server, started in `env` the first time (restarted if it died), or None
    if it could not start."""
    with _lock:
        s = _server.get("s", {})
        if s == {} or (s is not None and s["proc"].poll() is not None):
            s = _server["s"] = _start_server(env, cwd)
        return s


def run(cmd: list[str], timeout: float, env: dict, cwd: str, server_env: dict | None = None,
        modules: tuple[str, ...] = MODULES) -> subprocess.CompletedProcess | None:
    """`cmd` run as forks (see the module's docstring), or None where it must run as a real process.
    The server starts in `server_env` (default: `env`). Past `timeout`, the launcher's whole session
    is killed and TimeoutError names what it printed."""
    parsed = parse(cmd, modules) if enabled() else None
    if parsed is None:
        return None
    s = server(server_env or env, cwd)
    if s is None or fixed(env) != s["fixed"]:
        return None
    nproc, module, args = parsed
    with tempfile.TemporaryDirectory(prefix="distid-fork-out-") as tmp:
        out, err = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
        open(out, "w").close()
        open(err, "w").close()
        request = dict(nproc=nproc, module=module, args=args, env=env, cwd=cwd, stdout=out, stderr=err)
        with socket.socket(socket.AF_UNIX) as conn:
            conn.connect(s["path"])
            conn.sendall((json.dumps(request) + "\n").encode())
            conn.settimeout(timeout)
            reply = conn.makefile()
            pid = int(reply.readline())
            try:
                code = int(reply.readline())
            except (TimeoutError, ValueError) as e:  # ValueError: the launcher died (an empty reply)
                os.killpg(pid, signal.SIGKILL)
                said = f"timed out after {timeout} s" if not isinstance(e, ValueError) else "lost its launcher"
                raise TimeoutError(f"{' '.join(cmd)} {said}:\n{read(out)[-3000:]}\n{read(err)[-3000:]}")
        return subprocess.CompletedProcess(cmd, code, read(out), read(err))


def read(path: str) -> str:
    with open(path, errors="replace") as f:
        return f.read()


if __name__ == "__main__" and len(sys.argv) == 2:
    base = sys.path[1:]  # without this file's folder, as `python -m` starts
    sys.path[0] = os.getcwd()  # the preload imports distid from the repository, as a command does
    in_launcher = launch(*serve(sys.argv[1]))
    if in_launcher is None:
        os._exit(0)  # the launcher: its exit code is sent; nothing more to print or finalise
    become(*in_launcher, base)
    del base, in_launcher
    import runpy

    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
    sys.exit(0)
