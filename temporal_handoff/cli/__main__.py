"""`python -m temporal_handoff.cli` is `handoff`."""

import sys

from temporal_handoff.cli import app

sys.exit(app())
