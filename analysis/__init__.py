"""Paper-style tables and figures from a condensation-bench results store.

Modules: ``load`` reads one or several results folders into tidy DataFrames (no torch needed;
records through :class:`benchmarks.record.Record`); ``render`` is the table model and its
Markdown / LaTeX (booktabs) / CSV renderings; ``published`` the published numbers;
``tables`` the main, cross-architecture and cost tables; ``ablation`` the ablation table;
``figures`` the figures; ``report`` writes everything plus a one-page ``report.md``; ``cli``
is the command line (``python -m analysis --help``).

Everything printed about a method (name, order, family, ablation switches) comes from the
registry metadata the suite wrote into the records and ``cells.json``: this package holds no
method list.
"""

from analysis.load import AnalysisError, Problem, Results, load_results, load_store

__all__ = ["AnalysisError", "Problem", "Results", "load_results", "load_store", "write_report"]


def write_report(*args, **kwargs):
    """See :func:`analysis.report.write_report` (imported lazily: it pulls in matplotlib)."""
    from analysis.report import write_report as _write_report

    return _write_report(*args, **kwargs)
