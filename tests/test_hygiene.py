"""Text hygiene: the pages, the package, the configs and the launch scripts speak to users about the
code as it is — no number of this project's issue tracker, no absolute path of the machine a page
or a file was made on. `scan` reports each hit as (file, line, text); the second test plants every
forbidden form and every legitimate look-alike, so the patterns are checked as well as applied."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SCANNED = ["README.md", "docs/**/*.md", "docs/**/*.json", "distid/**/*.py", "distid/**/*.c",
           "configs/*.toml", "launch/*"]


class Forbidden:
    """The patterns, in one place. A hit is:

    - an issue number (`issue_words`): "issue 12", "issues 12 and 14", "Issue #12", "PR 31",
      "issue 7's target"; or a bare "#12", "(#12)" (`bare_number`) unless a counted noun precedes
      it ("rank #0", "step #3", "ranks #0 and #1": `numbered_thing`), it cites another project as
      owner/repo#1234 (a name or "/" right before "#" excludes it), or it sits inside a URL (a full
      address is a citation);
    - an absolute path of a build machine (`build_path`): /work/…, /tmp/…, /root/…, /home/…,
      /Users/…, /mnt/…, /scratch/…, /nfs/…, /private/…, /var/folders/…. A user's ~/.cache/…,
      relative paths and the system's /dev, /proc, /sys and /usr are not hits (a "~", "." or name
      right before the "/" excludes them).
    """

    issue_words = re.compile(r"\b(?:issues?|PRs?|pull\s+requests?|tickets?)\s*#?\d+"
                             r"(?:\s*(?:,|and|&|or)\s*#?\d+)*(?:'s)?", re.IGNORECASE)
    bare_number = re.compile(r"(?<![\w/.#&-])#\d+\b(?![\w-])")
    numbered_thing = re.compile(r"\b(?:ranks?|steps?|nodes?|workers?|gpus?|device|seed|epoch|round|layer|block|"
                                r"chunk|bucket|cell|point|process|thread|run|item|no|number|row|column|entry|"
                                r"attempt)\s*(?:#\d+\s*(?:,|and|or|to|–)\s*)*$", re.IGNORECASE)
    build_path = re.compile(r"(?<![\w.~/:-])/(?:work|tmp|root|home|Users|mnt|scratch|nfs|private|var/folders)/")
    url = re.compile(r"\bhttps?://\S+")


def hits(line: str) -> list[str]:
    """The forbidden texts in one line (see `Forbidden`)."""
    f = Forbidden
    bare = f.url.sub(lambda m: " " * len(m.group()), line)  # a full address is a citation, never a hit
    return ([m.group() for m in f.issue_words.finditer(bare)]
            + [m.group() for m in f.bare_number.finditer(bare) if not f.numbered_thing.search(bare[:m.start()])]
            + [m.group() for m in f.build_path.finditer(bare)])


def files(root: Path = REPO) -> list[Path]:
    return sorted({p for pattern in SCANNED for p in root.glob(pattern)
                   if p.is_file() and "__pycache__" not in p.parts})


def scan(root: Path = REPO) -> list[str]:
    """'file:line: text  [hit, …]' for every line of a scanned file with a hit."""
    out = []
    for path in files(root):
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # not text
        for n, line in enumerate(text.splitlines(), 1):
            if found := hits(line):
                out.append(f"{path.relative_to(root)}:{n}: {line.strip()[:200]}  {found}")
    return out


def test_no_issue_numbers_or_build_machine_paths():
    bad = scan()
    assert not bad, "issue numbers or build-machine paths (see tests/test_hygiene.py, Forbidden):\n" + "\n".join(bad)


FORBIDDEN = ["Fixed in issue 12.", "as issues 12 and 14 asked", "See Issue #12", "the fix (#12)", "#12 says so",
             "issue 7's target", "PR 31 added it", "issues 7, 19", "flock /work/cpu.lock python -m x",
             "--out /tmp/b", "log in /tmp/bash_jobs.0/3/stdout", "'/root/.cache/x'", "cd /home/alice/distid",
             '"/Users/bob/runs"', "(/mnt/data/mnist)", "data.root=/scratch/x"]
LEGITIMATE = ["pytorch/pytorch#135712", "see https://github.com/pytorch/pytorch/issues/135712 for it",
              "# Design", "## The map", "### 3. Steps", "rank #0 writes it", "step #3", "ranks #0 and #1",
              "~/.cache/distid", "/dev/shm", "/proc/PID/net/dev", "/sys/class/net", "/usr/bin/cc",
              "runs/tmp/x", "./data/mnist", "distid/work/x.py", "colour #1f77b4", "PowerSGD issues its P and Q",
              "an all-reduce issued inside a callback", "x = 1  # 2 ranks", "a 16,384 block over 10⁵"]


def test_the_scanner_catches_every_forbidden_form_and_passes_legitimate_text(tmp_path):
    (tmp_path / "docs" / "sub").mkdir(parents=True)
    (tmp_path / "distid").mkdir()
    (tmp_path / "docs" / "sub" / "page.md").write_text("\n".join(FORBIDDEN) + "\n")
    (tmp_path / "docs" / "ok.json").write_text("\n".join(LEGITIMATE) + "\n")
    (tmp_path / "distid" / "mod.py").write_text("\n".join(f"# {t}" for t in LEGITIMATE) + "\n")
    bad = scan(tmp_path)
    assert [b.split(":")[1] for b in bad] == [str(n) for n in range(1, len(FORBIDDEN) + 1)], "\n".join(bad)
    assert all(b.startswith("docs/sub/page.md:") for b in bad), bad
    for text in FORBIDDEN:
        assert hits(text), text
    for text in LEGITIMATE:
        assert not hits(text), (text, hits(text))
