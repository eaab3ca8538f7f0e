"""matplotlib (an optional dependency) for the reports: pyplot on the file-only Agg backend, or None."""

from __future__ import annotations


def pyplot():
    """matplotlib.pyplot with the Agg backend (no display needed), or None when matplotlib is absent."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt
