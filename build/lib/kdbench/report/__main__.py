"""``python -m kdbench.report ...`` (``make table``)."""

import sys

from kdbench.report.cli import main

sys.exit(main())
