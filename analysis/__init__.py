"""Paper-style tables and figures from a condensation-bench results store.

``load_results`` reads one or several results folders into a tidy DataFrame (no torch needed);
``analysis.tables`` renders the main / cross-architecture / CAFE-ablation / cost tables as
Markdown, LaTeX (booktabs) or CSV; ``analysis.figures`` draws the figures; ``write_report``
writes everything plus a one-page ``report.md``. Command line: ``python -m analysis --help``.
"""

from analysis.load import AnalysisError, Problem, Results, load_results, load_store

__all__ = ["AnalysisError", "Problem", "Results", "load_results", "load_store", "write_report"]


def write_report(*args, **kwargs):
    """See :func:`analysis.report.write_report` (imported lazily: it pulls in matplotlib)."""
    from analysis.report import write_report as _write_report

    return _write_report(*args, **kwargs)
