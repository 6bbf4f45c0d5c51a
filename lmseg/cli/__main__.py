"""``python -m lmseg.cli``: the ``lmseg`` command (also under ``torchrun``)."""

from lmseg.cli import main

raise SystemExit(main())
