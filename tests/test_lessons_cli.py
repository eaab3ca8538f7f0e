"""The lessons as users run them: under torchrun, with real processes and exit codes. (Lesson 2 on
four ranks, its agreement lines and its 1,195,256 ring bytes, is checked by tests/test_docs.py.)"""

from distid.primitives.__main__ import count_failures
from procs import torchrun


def test_primitives_lesson_passes_on_three_ranks(tmp_path):
    out = torchrun(3, "-m", "distid.primitives", "--sizes", "12,1200,12000", "--reps", "1", "--out", str(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "deprecated" not in out.stderr
    assert "90 of 90 rank-checks passed" in out.stdout
    assert out.stdout.count(" ok") == 30 and "FAIL" not in out.stdout
    assert f"wrote {tmp_path}/table.txt" in out.stdout and (tmp_path / "records.json").exists()

def test_primitives_lesson_counts_failures():
    good = {"ok": True, "sent": 8, "expected_sent": 8, "received": 4, "expected_received": 4}
    assert count_failures([[good], [good]]) == 0
    assert count_failures([[good], [dict(good, ok=False)]]) == 1
    assert count_failures([[dict(good, sent=12)], [good]]) == 1
    assert count_failures([[good], [dict(good, received=0)]]) == 1
