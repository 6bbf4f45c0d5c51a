"""``python -m lmseg``: the ``lmseg`` command."""

from lmseg.cli import main

raise SystemExit(main())
