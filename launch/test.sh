#!/usr/bin/env bash
# Install distid with its test extras into ./.venv and run the whole test suite (gloo, CPU), or with
# --touched[=REF] first, only the tests of what differs from REF (default: the upstream branch, else
# HEAD) and untracked files, as tests/touched.py selects them.
# MNIST and Fashion-MNIST are fetched first. Without them the tests that need them skip, except under
# CI (CI=true), where a missing dataset fails here and any skip but a documented gate fails pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
. .venv/bin/activate
export OMP_NUM_THREADS=1
unset DISTID_THREADS  # the tests pin one thread per process
fetch() {  # dataset, its name: fetched, or (under CI) a one-line failure; elsewhere its tests skip
  echo "+ python -m distid.data fetch $1 --root ${DISTID_DATA:-data}"
  python -m distid.data fetch "$1" --root "${DISTID_DATA:-data}" && return
  if [ -n "${CI:-}" ]; then
    echo "error: $2 could not be fetched into ${DISTID_DATA:-data}; CI runs every test that needs it (put its files there)" >&2
    exit 1
  fi
  echo "$2 not fetched: the tests that need it skip (under CI=true this fails)"
}
fetch mnist MNIST
fetch fashion-mnist Fashion-MNIST
if [[ "${1:-}" == --touched || "${1:-}" == --touched=* ]]; then  # --touched[=REF]: the tests of what differs
  ref="${1#--touched}"                                            # from REF (tests/touched.py), then any
  shift                                                           # further pytest options
  picked=$(python tests/touched.py ${ref#=}) || exit 2
  if [ -z "$picked" ]; then
    echo "nothing to run: no test names what changed (run the full suite: bash launch/test.sh)"
    exit 0
  fi
  selected=()
  while IFS= read -r arg; do selected+=("$arg"); done <<< "$picked"
  set -- "${selected[@]}" "$@"
fi
if [ $# -gt 0 ]; then  # a selection, or pytest options: one pytest process, every test in it
  echo "+ python -m pytest -q $*"
  exec python -m pytest -q "$@"
fi
# The whole suite: the tests that measure the loopback interface alone, then the rest on two
# pytest-xdist workers, a test file to each (most of a test's time is process start-up on one core).
echo "+ python -m pytest -q -m alone"
alone=0
python -m pytest -q -m alone || alone=$?
echo "+ python -m pytest -q -m 'not alone' -n 2 --dist loadfile"
rest=0
python -m pytest -q -m "not alone" -n 2 --dist loadfile || rest=$?
if [ "$alone" -ne 0 ]; then
  echo "error: the tests run alone (pytest -m alone) failed with exit code $alone" >&2
  exit "$alone"
fi
exit "$rest"
