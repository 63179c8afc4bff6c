"""``python -m kdbench.bench`` (``make bench``)."""

from kdbench.bench.cli import main

raise SystemExit(main())
