"""`python -m distid.probe`: the budget a task needs (distid/experiments/probe.py)."""

import sys

from distid.experiments.probe import main

if __name__ == "__main__":
    sys.exit(main())
