"""`handoff import`: what a seed file becomes, without starting anything.

Registered on the `app` of :mod:`temporal_handoff.cli.common`. Reading the file is done here
(the importers in :mod:`temporal_handoff.seeds` are pure); a malformed file is one
line naming the file and the field, exit code 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from temporal_handoff.cli.common import CliError, app, fail
from temporal_handoff.seeds import FORMATS, SeedError, SeedImport, read_seed
from temporal_handoff.seeds.preview import preview, render_preview


def load_seed_file(path: Path, fmt: str = "auto") -> SeedImport:
    """Read and import a seed file.

    Raises:
        CliError: unreadable or malformed, as `<file>: <field>: <problem>` (code 2).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise CliError(f"{path}: cannot read: {reason}") from None
    try:
        return read_seed(text, fmt)
    except SeedError as err:
        raise CliError(f"{path}: {err}") from None


@app.command("import")
def import_file(
    file: Path = typer.Argument(..., help="orchestrator state file or context-protocol state.json"),
    fmt: str = typer.Option(
        "auto", "--format", help=f"one of: {', '.join(FORMATS)}", show_default=True
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="show what the file becomes (required: nothing is started)"
    ),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Show what a seed file becomes: name, phases, tasks by status, decisions, blockers,
    eligible tasks. Start a session from it with `handoff start --project FILE`."""
    if not dry_run:
        fail("import only previews a file: pass --dry-run (start with `handoff start --project FILE`)")
    try:
        imp = load_seed_file(file, fmt)
    except CliError as err:
        fail(str(err), err.code)
    view = preview(imp)
    if as_json:
        print(json.dumps(view, indent=2, ensure_ascii=False))
    else:
        print(render_preview(view, str(file)))
