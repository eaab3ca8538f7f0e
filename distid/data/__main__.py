"""CLI: `python -m distid.data fetch {mnist,fashion-mnist} --root DIR` and `... info --root DIR`.

fetch prints the folder that holds the verified files: DIR/<Folder>/raw/, or DIR itself when
DIR already holds all four (plain or .gz, e.g. /usr/share/datasets/fashion-mnist); those are
used in place and nothing is written under DIR.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from .checksum import ChecksumError, cached_sha256
from .datasets import SPLIT_FILES, load_split
from .fetch import DATASETS, FILES, FetchError, fetch, find_idx


def _cmd_fetch(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    folder = fetch(args.dataset, args.root, verify=not args.no_verify)
    print(f"{folder}  ({time.perf_counter() - t0:.1f} s)")
    for name in FILES:
        path = find_idx(folder, name)
        check = "not verified (--no-verify)" if args.no_verify else f"sha256 {cached_sha256(path)} OK"
        print(f"  {path.name:27s} {check}")


def _cmd_info(args: argparse.Namespace) -> None:
    for split in SPLIT_FILES:
        s = load_split(args.dataset, args.root, split, verify=not args.no_verify)
        print(f"{s.name} {split:5s}: {len(s):6d} images {tuple(s.images.shape[1:])}, "
              f"labels {int(s.labels.min())}..{int(s.labels.max())}, "
              f"checksums {'not verified' if args.no_verify else 'OK'}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m distid.data", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    doc = ("verify the four IDX files in ROOT/<Folder>/raw/ or directly in ROOT (then used in place, "
           "nothing written), else download/copy the missing ones into ROOT/<Folder>/raw/; "
           "prints the folder that holds them")
    f = sub.add_parser("fetch", help=doc, description=doc)
    f.add_argument("dataset", choices=list(DATASETS))
    f.add_argument("--root", default="data", help="default: data")
    f.set_defaults(func=_cmd_fetch)
    i = sub.add_parser("info", help="print split sizes (verifies checksums)")
    i.add_argument("--root", default="data")
    i.add_argument("--dataset", choices=list(DATASETS), default="mnist")
    i.set_defaults(func=_cmd_info)
    for c in (f, i):
        c.add_argument("--no-verify", action="store_true", help="skip SHA-256 checks (your own IDX files)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; FetchError, ChecksumError/bad IDX (ValueError), OSError -> `error: ...`, exit 1."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    try:
        args.func(args)
    except (FetchError, ChecksumError, ValueError, OSError) as e:  # OSError: ROOT a file, read-only
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
