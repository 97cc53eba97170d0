"""``python -m echat`` runs the command-line interface."""

import sys

from echat.cli import main

sys.exit(main())
