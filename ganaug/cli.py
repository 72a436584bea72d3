"""`ganaug` command line. Commands are thin: parse -> config -> call the library.

User errors (bad flag, key, file, URI) exit 2 with one line; no traceback.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import types
import typing
from collections.abc import Callable
from typing import Any

import click

from ganaug.errors import UserError
from ganaug.evaluation_config import EvaluateConfig


def emit_json(obj: dict) -> None:
    """The last stdout line of every job command is JSON (ARCHITECTURE.md §3)."""
    click.echo(json.dumps(obj, sort_keys=True, default=str))


def config_options(cls: type) -> Callable[[Callable], Callable]:
    """Click options from a config dataclass, so each option is declared once, on its field:
    field(metadata={"help": ..., "flag": ...}); the flag defaults to --field-name and the
    command gets the field names as keyword arguments."""
    hints = typing.get_type_hints(cls)

    def decorate(f: Callable) -> Callable:
        for fld in reversed(dataclasses.fields(cls)):  # click lists options in decorator order
            flag = fld.metadata.get("flag") or f"--{fld.name.replace('_', '-')}"
            f = click.option(flag, fld.name, **_option_kwargs(fld, hints[fld.name]))(f)
        return f

    return decorate


def _option_kwargs(fld: dataclasses.Field, hint: Any) -> dict:
    """A bool is a switch (a "--x/--no-x" flag when it may be None); int and float are typed;
    a default is shown only where there is a real one (not None or "")."""
    kind = _unwrap_optional(hint)
    kw: dict[str, Any] = {"help": fld.metadata.get("help")}
    if kind is bool:
        if fld.default is None:
            kw["default"] = None
        else:
            kw["is_flag"] = True
        return kw
    kw["default"] = fld.default
    if kind in (int, float):
        kw["type"] = kind
    if fld.default not in (None, ""):
        kw["show_default"] = True
    return kw


def _unwrap_optional(hint: Any) -> Any:
    """`X | None` -> X."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else hint
    return hint


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
    from ganaug.describe import describe

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


# ----------------------------------------------------------------------------------- serve

@cli.command("serve")
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@click.option("--model", "model_specs", multiple=True, metavar="ID=URI",
              help="Add or override a model of the config's model map (repeatable).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--use-gpu", is_flag=True, help="One GPU per generator replica (num_gpus: 1), sampling on CUDA.")
@click.option("--allow-unauthenticated", is_flag=True,
              help="Serve beyond loopback without $GANAUG_API_TOKEN (an open API, on purpose).")
@click.pass_context
def serve_cmd(ctx: click.Context, config: str | None, model_specs: tuple[str, ...], host: str, port: int,
              use_gpu: bool, allow_unauthenticated: bool) -> None:
    """Run the HTTP service (Ray Serve) and its gallery page in the foreground until Ctrl-C.

    The bearer token comes from $GANAUG_API_TOKEN, read inside the ingress replica. Binding
    beyond loopback without it is refused unless --allow-unauthenticated.
    """
    from serve.args import build_args, load_app_config
    from serve.run import REQUEST_TIMEOUT_S, run_foreground

    entry, http = load_app_config(config)
    raw = dict(entry["args"])
    models = dict(raw.get("models") or {})
    for spec in model_specs:
        mid, sep, uri = spec.partition("=")
        if not sep or not mid.strip() or not uri.strip():
            raise click.BadParameter(f"{spec!r}: expected ID=URI", param_hint="--model")
        models[mid.strip()] = uri.strip()
    if not models:
        raise click.UsageError("no models to serve: give a CONFIG with args.models or --model ID=URI")
    raw["models"] = models
    if use_gpu:
        raw["use_gpu"] = True
    # Explicit flags win; otherwise the config's http_options; otherwise the defaults.
    src = ctx.get_parameter_source
    if src("host") is click.core.ParameterSource.DEFAULT and http.get("host"):
        host = str(http["host"])
    if src("port") is click.core.ParameterSource.DEFAULT and http.get("port"):
        port = int(http["port"])
    run_foreground(build_args(raw), host=host, port=port, name=str(entry.get("name") or "ganaug"),
                   route_prefix=str(entry.get("route_prefix") or "/"),
                   request_timeout_s=float(http.get("request_timeout_s") or REQUEST_TIMEOUT_S),
                   allow_unauthenticated=allow_unauthenticated, echo=click.echo)


# ------------------------------------------------------------------------ generate / translate

def _shard_options(f):
    """Flags shared by generate and translate (validated in ganaug.generation, one-line errors)."""
    f = click.option("--shared-fs", is_flag=True,
                     help="Plain --out/--checkpoint paths are on a filesystem shared by every node: allow them "
                          "on a multi-node cluster.")(f)
    f = click.option("--allow-env-change", is_flag=True,
                     help="Finish a set begun in another software/device environment (the manifest says so).")(f)
    f = click.option("--overwrite", is_flag=True,
                     help="Replace a set made with different arguments in --out.")(f)
    f = click.option("--resources", "resources", default=None, metavar="JSON",
                     help="Extra custom Ray resources each sampling actor asks for, e.g. '{\"gen_node\": 1}', "
                          "to run them on a node type an autoscaler starts (not part of the set's identity).")(f)
    f = click.option("--use-gpu", is_flag=True, help="One whole GPU per sampling actor.")(f)
    f = click.option("--workers", type=int, default=None,
                     help="Sampling actors, one CPU (or one GPU with --use-gpu) each [default: one per cluster "
                          "CPU less one kept for encoding and writing, or one per GPU].")(f)
    f = click.option("--format", "fmt", default="png", show_default=True, help="Image encoding: png, jpeg or npy.")(f)
    f = click.option("--rows-per-shard", type=int, default=1000, show_default=True, help="Rows per Parquet file.")(f)
    f = click.option("--out", default="", help="Output folder: a path or s3://bucket/prefix.  [required]")(f)
    f = click.option("--checkpoint", "checkpoint_uri", default="",
                     help="Checkpoint folder or run folder URI.  [required]")(f)
    return f


@cli.command()
@_shard_options
@click.option("--num", type=int, default=None, help="Rows to generate (implied by counts: and balance: plans).")
@click.option("--labels", default=None,
              help="uniform (default) | 0,3,7 | counts:0=500,3=200 | balance:DATASET")
@click.option("--truncation", type=float, default=1.0, show_default=True, help="Truncation psi in [0, 2].")
@click.option("--seed", type=int, default=0, show_default=True, help="Row i uses seed SEED+i.")
@click.option("--filter", "filter_spec", default=None, help="Keep only images a filter accepts, e.g. fidelity:0.9.")
@click.option("--size", default=None, metavar="HxW|native",
              help="Write the images at HxW (antialiased Lanczos resize), or `native`: the size of the data "
                   "the model was trained on [default: the model's resolution].")
def generate(checkpoint_uri, out, rows_per_shard, fmt, workers, use_gpu, resources, overwrite, allow_env_change,
             shared_fs, num, labels, truncation, seed, filter_spec, size) -> None:
    """Bulk-generate a labelled image set as Parquet shards (Ray Data)."""
    from ganaug.generation import GenerateConfig, run_generate

    cfg = GenerateConfig(checkpoint=checkpoint_uri, out=out, num=num, labels=labels, truncation=truncation,
                         seed=seed, rows_per_shard=rows_per_shard, format=fmt, workers=workers, use_gpu=use_gpu,
                         filter=filter_spec, overwrite=overwrite, size=size, allow_env_change=allow_env_change,
                         shared_fs=shared_fs, resources=resources)
    emit_json(run_generate(cfg))


@cli.command()
@_shard_options
@click.option("--input", "input_spec", default="", help="Dataset spec to translate, e.g. mnist:DIR[0:1000].  [required]")
@click.option("--restyle", default=None, metavar="coarse|middle|fine",
              help="StyleGAN2 checkpoint: project each input image into W+ and take this layer group from a "
                   "seeded style latent, keeping the image's own layers elsewhere (fine: new texture, same "
                   "content; coarse: the image's texture on a new shape).")
@click.option("--style-seed", type=int, default=0, show_default=True,
              help="--restyle: output row r takes its style from seed STYLE_SEED+r.")
@click.option("--variants", type=int, default=1, show_default=True,
              help="--restyle: restyled rows per input image (row r is input row r // VARIANTS).")
@click.option("--project-steps", type=int, default=200, show_default=True,
              help="--restyle: optimisation steps of each image's projection.")
def translate(checkpoint_uri, out, rows_per_shard, fmt, workers, use_gpu, resources, overwrite, allow_env_change,
              shared_fs, input_spec, restyle, style_seed, variants, project_steps) -> None:
    """Run an image-to-image model (pix2pix, cyclegan) over a dataset, or restyle it with a StyleGAN2
    (--restyle); same output format as generate, with the `source` column."""
    from ganaug.generation import TranslateConfig, run_translate

    cfg = TranslateConfig(checkpoint=checkpoint_uri, input=input_spec, out=out, rows_per_shard=rows_per_shard,
                          format=fmt, workers=workers, use_gpu=use_gpu, overwrite=overwrite,
                          allow_env_change=allow_env_change, shared_fs=shared_fs, resources=resources,
                          restyle=restyle, style_seed=style_seed, variants=variants, project_steps=project_steps)
    emit_json(run_translate(cfg))


# ----------------------------------------------------------------------------------- train

@cli.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key, e.g. --set model.width=64 (repeatable).")
@click.option("--workers", type=click.IntRange(1), default=None,
              help="Ray Train workers (default: training.num_workers). Global batch = batch_size x workers.")
@click.option("--use-gpu", is_flag=True, default=None, help="One GPU per worker (NCCL, bf16 autocast).")
@click.option("--storage", "storage_root", default=None, help="Storage root URI (default: storage.root).")
@click.option("--name", default=None, help="Run name (default: the config file's stem). Same name = resume.")
@click.option("--shared-fs", is_flag=True,
              help="A plain --storage path is a filesystem shared by every node (NFS...): allow it on a multi-node cluster.")
def train(config: str, overrides: tuple[str, ...], workers: int | None, use_gpu: bool | None,
          storage_root: str | None, name: str | None, shared_fs: bool) -> None:
    """Train a GAN on Ray Train; checkpoints, metrics.jsonl and sample grids go to STORAGE/NAME/."""
    from pathlib import Path

    from ganaug.config import load_config
    from ganaug.training.worker import TrainingFailed, prepare_run, run_training

    cfg = load_config(config, list(overrides))
    # Config, data spec, storage and resume compatibility are all checked before Ray starts.
    plan = prepare_run(cfg, workers, use_gpu, storage_root, name or Path(config).stem)
    try:
        summary = run_training(plan.cfg, plan=plan, echo=lambda line: click.echo(line), shared_fs=shared_fs)
    except TrainingFailed as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    emit_json(summary)


# -------------------------------------------------------------------------------- classify

@cli.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key, e.g. --set data.ratio=0.5 (repeatable).")
@click.option("--storage", "storage_root", default=None, help="Storage root URI (default: storage.root).")
@click.option("--name", default=None, help="Job name (default: the config file's stem). Same name = resume.")
@click.option("--shared-fs", is_flag=True,
              help="A plain --storage path is a filesystem shared by every node: allow it on a multi-node cluster.")
def classify(config: str, overrides: tuple[str, ...], storage_root: str | None, name: str | None,
             shared_fs: bool) -> None:
    """Train a classifier on Ray Train over real (or real + synthetic) rows; held-out accuracy per
    class goes to STORAGE/classify/NAME/report.json."""
    from pathlib import Path

    from ganaug.classify import load_classify_config
    from ganaug.classify_job import run_classify

    cfg = load_classify_config(config, list(overrides))
    report = run_classify(cfg, name or Path(config).stem, storage_root,
                          echo=lambda line: click.echo(line, err=True), shared_fs=shared_fs)
    emit_json({k: v for k, v in report.items() if k != "config"})


# -------------------------------------------------------------------------------- evaluate

@cli.command("evaluate")
@config_options(EvaluateConfig)
def evaluate_cmd(**fields: Any) -> None:
    """Judge a generator or a generated set against real data: report.json, report.md, PNG figures."""
    from ganaug.evaluation import run_evaluate

    emit_json(run_evaluate(EvaluateConfig(**fields), echo=lambda line: click.echo(line, err=True)))


# ------------------------------------------------------------------------------------ tune

@cli.command("tune")
@click.argument("sweep", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="A model./data./training./storage. key: fixed for every trial over the base config; any other "
                   "key: the sweep file's, e.g. num_samples=4 or scheduler.max_steps=400 (repeatable).")
@click.option("--storage", "storage_root", default=None,
              help="Storage root URI (default: the base config's storage.root): runs go to STORAGE/runs/NAME-tNN, "
                   "the sweep's files to STORAGE/sweeps/NAME.")
@click.option("--name", default=None, help="Sweep name (default: the sweep file's stem). Same name = resume.")
@click.option("--shared-fs", is_flag=True,
              help="A plain --storage path is a filesystem shared by every node (NFS...): allow it on a multi-node cluster.")
def tune_cmd(sweep: str, overrides: tuple[str, ...], storage_root: str | None, name: str | None,
             shared_fs: bool) -> None:
    """Search GAN and mixing settings with Ray Tune (ASHA) for the augmentation gain on a validation split."""
    from ganaug.sweep import load_sweep
    from ganaug.tuning import SweepFailed, run_sweep

    # The sweep file, its space and data are all checked before Ray starts.
    plan = load_sweep(sweep, list(overrides), storage_root=storage_root, name=name)
    try:
        best = run_sweep(plan, echo=lambda line: click.echo(line, err=True), shared_fs=shared_fs)
    except SweepFailed as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    emit_json(best)


def quiet_ray_defaults() -> None:
    """Keep users' terminals readable: ganaug prints its own progress line per step or shard,
    so Ray Data's per-dataset INFO lines are noise (they still go to the session log file).
    Set before Ray Data configures its loggers; an explicit user setting wins."""
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")


def main(argv: list[str] | None = None, *, command: str | None = None) -> None:
    """`ganaug ARGV`; with `command`, that subcommand alone (the `python -m jobs.X` entrypoints,
    whose usage line must read `python -m jobs.X`, not `python -m jobs.X X`)."""
    quiet_ray_defaults()
    target, prog = cli, None
    if command is not None:
        target, prog = cli.commands[command], f"python -m jobs.{command}"
    try:
        target.main(args=argv, prog_name=prog, standalone_mode=False,
                    help_option_names=cli.context_settings["help_option_names"])
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.exceptions.UsageError as e:
        # One line naming the bad flag (click's default is a three-line usage block).
        cmd = f"{e.ctx.command_path}: " if e.ctx is not None else ""
        click.echo(f"error: {cmd}{e.format_message()}", err=True)
        sys.exit(2)
    except click.exceptions.ClickException as e:
        click.echo(f"error: {e.format_message()}", err=True)
        sys.exit(2)
    except UserError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
