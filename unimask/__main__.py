"""``python -m unimask`` runs the command line."""

import sys

from unimask.cli import main

sys.exit(main())
