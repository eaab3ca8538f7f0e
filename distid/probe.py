"""`python -m distid.probe`: the budget a task needs (distid/experiments/intrinsic/probe.py)."""

import sys

from distid.experiments.intrinsic.probe import main

if __name__ == "__main__":
    sys.exit(main())
