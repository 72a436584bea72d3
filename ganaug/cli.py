"""`ganaug` command line. Commands are thin: parse -> config -> call the library.

User errors (bad flag, key, file, URI) exit 2 with one line; no traceback.
"""

from __future__ import annotations

import json
import sys

import click

from ganaug.errors import UserError


def emit_json(obj: dict) -> None:
    """The last stdout line of every job command is JSON (DESIGN §2)."""
    click.echo(json.dumps(obj, sort_keys=True, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ganaug")
def cli() -> None:
    """Make image datasets bigger and more diverse with GANs, on Ray."""


# ------------------------------------------------------------------------------------ info

@cli.command()
@click.argument("uri")
@click.option("--allow-incomplete", is_flag=True, help="Describe a generated set that has no _manifest.json yet.")
def info(uri: str, allow_incomplete: bool) -> None:
    """What a dataset spec, checkpoint, run or generated set is."""
    from ganaug.inspect import describe

    emit_json(describe(uri, allow_incomplete=allow_incomplete))


# ---------------------------------------------------------------------------------- sample

@cli.command()
@click.option("--checkpoint", "checkpoint_uri", required=True, help="Checkpoint folder or run folder URI.")
@click.option("--num", default=64, show_default=True, type=click.IntRange(1, 4096))
@click.option("--out", required=True, help="PNG path for the grid.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0))
@click.option("--truncation", default=1.0, show_default=True, type=click.FloatRange(0.0, 2.0))
def sample(checkpoint_uri: str, num: int, out: str, seed: int, truncation: float) -> None:
    """A quick local look: a grid PNG, one row per class (no Ray)."""
    from ganaug import storage
    from ganaug.sampling import Sampler, png_bytes

    sampler = Sampler.from_checkpoint(checkpoint_uri)
    rows = max(sampler.num_classes, 1) if sampler.conditional else 1
    per_row = max(1, num // rows)
    if sampler.kind == "translation":
        raise UserError("sample: translation models need inputs; use `ganaug translate`")
    grid = sampler.grid(per_class=per_row, seed=seed, truncation=truncation)
    storage.write_bytes(out, png_bytes(grid, upscale=2))
    emit_json({"grid": out, "checkpoint": sampler.checkpoint_uri, "generator": sampler.checkpoint_id})


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.exceptions.ClickException as e:
        e.show()
        sys.exit(2)
    except UserError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
