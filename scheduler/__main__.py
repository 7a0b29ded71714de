"""``python -m scheduler``: the ``hetsched`` command line (see :mod:`scheduler.cli`)."""
from .cli import main

raise SystemExit(main())
