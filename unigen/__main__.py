"""``python -m unigen`` does the same as the ``unigen`` console script."""

import sys

from unigen.cli import main

sys.exit(main())
