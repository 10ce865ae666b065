"""`handoff`: the command-line interface (typer + rich).

`common` holds the `app` and what every command shares; each module beside it
registers one group of commands on that `app`. Importing them here, in this order,
is what builds the CLI.
"""

# The order of registration is the order of `handoff --help`.
# isort: off
from temporal_handoff.cli import servers  # noqa: F401
from temporal_handoff.cli import sessions  # noqa: F401
from temporal_handoff.cli import steer  # noqa: F401
from temporal_handoff.cli import read  # noqa: F401
from temporal_handoff.cli import codec  # noqa: F401
from temporal_handoff.cli import visibility  # noqa: F401
from temporal_handoff.cli import chain  # noqa: F401
from temporal_handoff.cli import cluster  # noqa: F401
# isort: on
from temporal_handoff.cli.common import app

__all__ = ["app", "main"]


def main() -> None:  # pragma: no cover - console entry point
    app()
