"""tests/touched.py, the selection behind `launch/test.sh --touched`: what each kind of change selects."""

import subprocess
import sys

import touched
from procs import REPO


def test_a_module_selects_the_tests_that_name_it():
    assert touched.selection(["distid/subspace/fastfood.py"]) == ["tests/test_subspace.py"]
    assert "tests/test_launch.py" in touched.selection(["launch/local.sh"])  # any other file: by its path
    assert touched.selection(["docs/when_things_go_wrong.md"]) == ["tests/test_faults.py"]  # a page without cases


def test_a_page_selects_its_cases_and_the_page_checks():
    picked = touched.selection(["docs/lesson3_fsdp.md"])
    assert "tests/test_docs.py::test_docs_command_runs_at_a_tiny_size[lesson3_fsdp.md:0]" in picked
    assert not any("lesson4" in x for x in picked) and set(touched.PAGE_CHECKS) <= set(picked)


def test_helpers_deleted_tests_and_conftest():
    assert "tests/test_faults.py" in touched.selection(["tests/procs.py"])
    assert touched.selection(["tests/test_no_longer_there.py"]) == []
    assert touched.selection(["tests/conftest.py", "distid/runtime.py"]) == ["tests"]


def test_a_whole_file_absorbs_its_node_ids():
    picked = touched.selection(["docs/lesson3_fsdp.md", "tests/test_docs.py"])
    assert picked == ["tests/test_docs.py"]


def test_an_unknown_ref_is_one_line_and_exit_2():
    out = subprocess.run([sys.executable, "tests/touched.py", "no-such-ref"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 2 and out.stdout == "" and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "no-such-ref" in out.stderr
