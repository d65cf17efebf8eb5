"""``python -m benchmarks``: the ``condbench`` command line (see :mod:`benchmarks.cli`)."""

import sys

from benchmarks.cli import main

sys.exit(main())
