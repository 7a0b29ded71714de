"""``python -m scheduler.cli``: the ``hetsched`` command line (as ``python -m scheduler``)."""
from . import main

raise SystemExit(main())
