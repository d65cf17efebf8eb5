"""``python -m analysis``: same as the ``condbench-analysis`` console script."""

from analysis.cli import main

raise SystemExit(main())
