"""`python -m mmdlrm ...` (the same as the `mmdlrm` console script)."""

import sys

from mmdlrm.cli import main

sys.exit(main())
