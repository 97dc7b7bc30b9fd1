"""The `metaselector` command line: one click group (cli/group.py), commands by topic."""

from __future__ import annotations

import sys

import click

from .. import distributed
from ..errors import MetaSelectorError
from . import data_commands, model_commands, run_commands  # noqa: F401 (each registers its commands)
from .group import cli


def main(args: list[str] | None = None) -> None:
    try:
        cli.main(args=args, prog_name="metaselector", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except MetaSelectorError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    finally:
        distributed.leave()



__all__ = ["cli", "main"]
