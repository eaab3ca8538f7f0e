"""`python -m distid.preflight`: every check goes here, a missing dataset or a corrupted file is a
no-go naming the fetch command, a check that raises or ranks that fail say why in one line."""

import os
import shutil
import sys
from pathlib import Path

import pytest

from datasets_for_tests import DATA_ROOT, have_dataset
from distid import preflight
from procs import run, user_env

CHECKS = ("python", "torch", "venv", "datasets", "kernel", "ranks", "disk", "memory")
needs_data = pytest.mark.skipif(not (have_dataset("mnist") and have_dataset("fashion-mnist")),
                                reason="needs MNIST and Fashion-MNIST: python -m distid.data fetch mnist "
                                       "(and fashion-mnist)")


def preflight_cmd(data_root: str, *more: str) -> list[str]:
    return [sys.executable, "-m", "distid.preflight", "--data-root", data_root, *more]


def lines(stdout: str) -> dict[str, str]:
    """{check name: its verdict} from the command's output."""
    found = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in ("go", "no-go"):
            found[parts[1]] = parts[0]
    return found


def env_with_kernel() -> dict:
    env = user_env()
    env.pop("DISTID_KERNEL", None)  # a suite run may turn the C kernel off; the check is whether it builds
    return env


@needs_data
def test_every_check_goes_here():
    res = run(preflight_cmd(DATA_ROOT), timeout=180, env=env_with_kernel())
    assert "Traceback" not in res.stderr, res.stderr
    want = {name: "go" for name in CHECKS}
    if not (shutil.which("cc") or shutil.which("gcc") or os.environ.get("CC")):
        want["kernel"] = "no-go"  # no compiler: the check names the torch fallback instead
    assert lines(res.stdout) == want, res.stdout
    assert res.returncode == (0 if "no-go" not in want.values() else 1), res.stdout
    summary = "preflight: all go" if res.returncode == 0 else "preflight: 1 no-go (kernel)"
    assert res.stdout.splitlines()[-1] == summary


def test_an_empty_data_root_is_a_no_go_naming_the_fetch_command(tmp_path):
    res = run(preflight_cmd(str(tmp_path), "--nproc", "1"), timeout=180, env=env_with_kernel())  # one rank: quicker
    assert res.returncode == 1, res.stdout
    assert lines(res.stdout)["datasets"] == "no-go", res.stdout
    said = next(line for line in res.stdout.splitlines() if line.split()[1:2] == ["datasets"])
    assert f"`python -m distid.data fetch mnist --root {tmp_path}`" in said
    assert "datasets" in res.stdout.splitlines()[-1] and "no-go" in res.stdout.splitlines()[-1]


@pytest.mark.skipif(not have_dataset("mnist"), reason="needs MNIST: python -m distid.data fetch mnist")
def test_a_flipped_byte_fails_its_checksum(tmp_path):
    raw, real = tmp_path / "MNIST" / "raw", Path(DATA_ROOT) / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        (raw / name).symlink_to((real / name).resolve())
    bad = raw / "t10k-labels-idx1-ubyte"
    data = bytearray((real / bad.name).read_bytes())
    data[-1] ^= 0x01
    bad.write_bytes(bytes(data))
    ok, detail = preflight.check_datasets(str(tmp_path), ["mnist"])
    assert not ok
    assert "t10k-labels-idx1-ubyte fails its checksum" in detail
    assert f"python -m distid.data fetch mnist --root {tmp_path}" in detail


@pytest.mark.parametrize("version, spec, ok", [
    ((3, 11, 7), ">=3.10", True), ((3, 9, 18), ">=3.10", False), ((2, 13, 0), ">=2.5,<3", True),
    ((3, 0, 1), ">=2.5,<3", False), ((2, 5), "==2.5", True), ((2, 4, 1), ">2.4", False),
])
def test_a_version_meets_a_requirement(version, spec, ok):
    assert preflight.satisfies(version, spec) is ok


def test_the_requirements_are_read_from_pyproject(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nrequires-python = ">=3.12"\ndependencies = [\n    "torchx>=9",\n    "torch>=2.7, <3",\n]\n')
    assert preflight.declared("python", tmp_path) == ">=3.12"
    assert preflight.declared("torch", tmp_path) == ">=2.7, <3"
    with pytest.raises(ValueError, match="no requirement on numpy"):
        preflight.declared("numpy", tmp_path)
    assert preflight.version_tuple("2.13.0+cpu") == (2, 13, 0)


def test_a_python_outside_the_venv_is_told_to_activate_it(tmp_path):
    ok, detail = preflight.check_venv(tmp_path)
    assert not ok and "bash launch/setup.sh" in detail
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").touch()
    ok, detail = preflight.check_venv(tmp_path)
    assert not ok and "`. .venv/bin/activate`" in detail


def test_the_lessons_use_both_datasets():
    assert preflight.lesson_datasets() == ["mnist", "fashion-mnist"]


def test_a_check_that_raises_is_a_one_line_no_go():
    def broken():
        raise OSError("first line\nsecond line")

    assert preflight.run_check(broken) == (False, "OSError: first line")


def test_ranks_that_fail_say_why_in_one_line(monkeypatch):
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "no-such-interface")
    ok, detail = preflight.check_ranks(1)
    assert not ok and "\n" not in detail
    assert "no-such-interface" in detail, detail


def test_ranks_past_the_timeout_are_killed():
    ok, detail = preflight.check_ranks(2, timeout=0.2)
    assert not ok and "did not finish in 0.2 s (killed)" in detail, detail


def test_too_little_disk_or_memory_is_a_no_go(monkeypatch, tmp_path):
    monkeypatch.setattr(preflight, "DISK_NEED_GB", 1e9)
    monkeypatch.setattr(preflight, "MEMORY_NEED_GB", 1e9)
    ok, detail = preflight.check_disk(str(tmp_path / "data"), str(tmp_path / "runs"))
    assert not ok and "free some space" in detail
    ok, detail = preflight.check_memory()
    assert not ok and "close other programs" in detail


def test_a_kernel_turned_off_names_the_fallback(monkeypatch):
    from distid.subspace import kernel

    monkeypatch.setenv("DISTID_KERNEL", "torch")
    kernel.library.cache_clear()
    try:
        ok, detail = preflight.check_kernel()
    finally:
        monkeypatch.undo()
        kernel.library.cache_clear()
    assert not ok and "DISTID_KERNEL=torch" in detail and "distid/subspace/fastfood.py" in detail


def test_enough_memory_for_all_but_lesson_6s_tables_is_a_go_that_says_so(monkeypatch):
    monkeypatch.setattr(preflight, "MEMORY_NEED_GB", 0.0)
    monkeypatch.setattr(preflight, "WIDE_NEED_GB", 1e9)
    ok, detail = preflight.check_memory()
    assert ok and "lesson 6's tables need" in detail
