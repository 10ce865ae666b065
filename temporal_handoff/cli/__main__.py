"""`python -m temporal_handoff.cli` is `handoff`."""

import sys

from temporal_handoff.cli import app

if __name__ == "__main__":  # importing the module (walk_packages in tests) runs nothing
    sys.exit(app())
