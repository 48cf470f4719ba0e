"""The one Typer app. Each subcommand parses arguments, calls the library, renders results.

stdout carries JSON Lines (the contracts in DESIGN.md); tables and progress go to stderr,
or to stdout with ``--format table``.
"""

from __future__ import annotations

import typer
from rich.console import Console

from minewatch import __version__

app = typer.Typer(
    name="minewatch",
    help="Find hidden cryptocurrency mining from traffic and meter data.",
    no_args_is_help=True,
    add_completion=False,
)
err_console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"minewatch {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """minewatch: joins what the operator sees with what the utility sees."""


def main() -> None:
    app()
