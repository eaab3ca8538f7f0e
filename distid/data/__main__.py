"""CLI: `python -m distid.data fetch {mnist,fashion-mnist} --root DIR` and `... info --root DIR`."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from .checksum import ChecksumError, cached_sha256
from .datasets import SPLIT_FILES, load_split
from .fetch import DATASETS, FILES, FetchError, fetch


def _cmd_fetch(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    raw = fetch(args.dataset, args.root)
    print(f"{raw}  ({time.perf_counter() - t0:.1f} s)")
    for name in FILES:
        print(f"  {name:24s} sha256 {cached_sha256(raw / name)} OK")


def _cmd_info(args: argparse.Namespace) -> None:
    for split in SPLIT_FILES:
        s = load_split(args.dataset, args.root, split)
        print(f"{s.name} {split:5s}: {len(s):6d} images {tuple(s.images.shape[1:])}, "
              f"labels {int(s.labels.min())}..{int(s.labels.max())}, checksums OK")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m distid.data", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="download/verify the raw IDX files into ROOT/<Folder>/raw/")
    f.add_argument("dataset", choices=list(DATASETS))
    f.add_argument("--root", default="data")
    f.set_defaults(func=_cmd_fetch)
    i = sub.add_parser("info", help="print split sizes (verifies checksums)")
    i.add_argument("--root", default="data")
    i.add_argument("--dataset", choices=list(DATASETS), default="mnist")
    i.set_defaults(func=_cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; FetchError/ChecksumError/missing files -> message on stderr, exit 1."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    try:
        args.func(args)
    except (FetchError, ChecksumError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
