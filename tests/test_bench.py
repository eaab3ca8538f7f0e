"""distid.bench steps: every variant timed in one run, ratios relative to full training."""

import json
import subprocess
import sys

from datasets_for_tests import REPO


def test_bench_steps_writes_json_and_markdown(tmp_path):
    out = subprocess.run([sys.executable, "-m", "distid.bench", "steps", "--steps", "3", "--rounds", "1",
                          "--d", "64", "--out", str(tmp_path)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads((tmp_path / "bench.json").read_text())
    rows = {r["variant"]: r for r in result["steps"]["rows"]}
    assert set(rows) == {"full", "subspace/fastfood", "subspace/sparse", "subspace/dense"}
    assert rows["full"]["ratio_to_full"] == 1.0 and all(r["step_ms"] > 0 for r in rows.values())
    assert result["machine"]["cores"] >= 1 and "| subspace/fastfood |" in (tmp_path / "bench.md").read_text()
