"""Config: YAML -> typed dataclasses, errors that name the key, overrides, round trips."""

import json

import pytest
import yaml

from ganaug.config import ConfigError, RunConfig, config_from_dict, load_config


def test_defaults_validate_and_roundtrip_yaml_json(tmp_path):
    cfg = load_config(None, ["model.width=32", "training.steps=10", "data.spec=builtin:digits[0:100]"])
    assert cfg.model.width == 32 and cfg.training.steps == 10
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg
    assert config_from_dict(json.loads(cfg.to_json())) == cfg
    assert cfg.digest() == load_config(path).digest()


def test_unknown_key_names_full_path_and_suggests(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"training": {"batch_sise": 8}}))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert "training.batch_sise" in msg and "did you mean 'training.batch_size'" in msg


def test_unknown_section():
    with pytest.raises(ConfigError, match="unknown config key 'modle'.*did you mean 'model'"):
        config_from_dict({"modle": {}})


def test_wrong_type_names_key_value_and_expectation():
    with pytest.raises(ConfigError) as e:
        config_from_dict({"training": {"steps": "many"}})
    assert "training.steps" in str(e.value) and "'many'" in str(e.value) and "integer" in str(e.value)


@pytest.mark.parametrize("override, key", [
    ("data.resolution=48", "data.resolution"),
    ("data.channels=2", "data.channels"),
    ("training.loss=wgan", "training.loss"),
    ("training.lr_g=-1", "training.lr_g"),
    ("training.augment=color,flip", "training.augment"),
    ('training.resources_per_worker={"accel": -1}', r"training\.resources_per_worker\.accel"),
    ('training.resources_per_worker={"GPU": 1}', r"training\.resources_per_worker\.GPU"),
    ("training.resources_per_worker=accel", r"training\.resources_per_worker'.*expected a mapping"),
])
def test_out_of_range_values(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config(None, [override])


def test_unknown_family_suggests():
    with pytest.raises(ConfigError, match="did you mean 'cgan'"):
        load_config(None, ["model.family=cgn"])


def test_override_coercion_and_errors():
    cfg = load_config(None, ["training.lr_g=1e-3", "model.spectral_norm=false", "training.seed=7"])
    assert cfg.training.lr_g == 1e-3 and cfg.model.spectral_norm is False and cfg.training.seed == 7
    cfg = load_config(None, ['training.resources_per_worker={"accel": 1, "big_disk": 0.5}'])
    assert cfg.training.resources_per_worker == {"accel": 1.0, "big_disk": 0.5}
    assert config_from_dict(cfg.to_dict()).training.resources_per_worker == {"accel": 1.0, "big_disk": 0.5}
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["training.steps"])
    with pytest.raises(ConfigError, match="training.stepz"):
        load_config(None, ["training.stepz=3"])
    with pytest.raises(ConfigError, match="not a section"):
        load_config(None, ["training.steps=3", "training.steps.x=3"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)


def test_runconfig_is_plain_dataclass():
    assert RunConfig().model.family == "cgan"


@pytest.mark.parametrize("command", ["train", "generate", "translate", "evaluate"])
def test_job_entrypoints_name_themselves(command, capsys):
    """`python -m jobs.X -h` shows `python -m jobs.X` (not `... X X`), and a bad flag is one line naming it."""
    from ganaug.cli import main

    main(["-h"], command=command)  # help returns normally
    assert capsys.readouterr().out.startswith(f"Usage: python -m jobs.{command} [OPTIONS]")
    with pytest.raises(SystemExit) as e:
        main(["--no-such-flag"], command=command)
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == (f"error: python -m jobs.{command}: No such option '--no-such-flag'.")


def test_resume_check_reads_keys_older_runs_lack_as_their_old_meaning():
    from ganaug.training.plan import _diff_sections

    old = {"model": {"family": "cgan", "width": 16}, "data": {"spec": "builtin:digits"}}
    same = {"model": {"family": "cgan", "width": 16, "mbstd_group": 0, "mode_seeking": 0.0},
            "data": {"spec": "builtin:digits", "skip_bad": True}}
    assert _diff_sections(old, same) == []
    changed = {**same, "model": {**same["model"], "mode_seeking": 1.0, "width": 32}}
    assert _diff_sections(old, changed) == ["model.mode_seeking: absent (= 0.0) -> 1.0", "model.width: 16 -> 32"]


def test_yaml_bomb_is_refused(tmp_path, cli_error):
    # "billion laughs": 9 levels of 9 aliases each would expand to 9**9 strings.
    lines = ['a0: &a0 ["lol"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    from ganaug.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="YAML bomb"):
        load_config(bomb)
    wide = tmp_path / "wide.yaml"
    wide.write_text('x: &x 1\ny: [' + ", ".join(["*x"] * 500) + "]\n")
    with pytest.raises(ConfigError, match="YAML aliases"):
        load_config(wide)
    # Python tags are not constructed (safe loading)
    evil = tmp_path / "evil.yaml"
    evil.write_text("model: !!python/object/apply:os.system ['true']\n")
    assert "evil.yaml: invalid YAML" in cli_error(["train", str(evil)])
    assert "YAML bomb" in cli_error(["train", str(bomb)])
    # The Serve config goes through the same bounded reader.
    from serve.args import ServeConfigError, load_app_config

    with pytest.raises(ServeConfigError, match="serve config .*bomb.yaml.*YAML bomb"):
        load_app_config(str(bomb))


# ----------------------------------------------------------------------------- families and registries

FAMILY_NAMES = ["cgan", "cyclegan", "dcgan", "pix2pix", "stylegan2"]


@pytest.mark.parametrize("family, key, value", [
    ("cgan", "res_blocks", 3), ("dcgan", "l1_weight", 10.0), ("pix2pix", "z_dim", 64),
    ("cyclegan", "mode_seeking", 1.0), ("stylegan2", "spectral_norm", False),
])
def test_a_model_key_of_another_family_names_the_key_and_the_family(family, key, value):
    from ganaug.families import FAMILIES

    with pytest.raises(ConfigError) as e:
        load_config(None, [f"model.family={family}", f"model.{key}={value}"])
    msg = str(e.value)
    assert f"config key 'model.{key}' does not apply to family '{family}'" in msg
    assert msg.endswith("its keys: family, " + ", ".join(FAMILIES.get(family).keys))
    # The same key at the family's resolved default is what a run's config.yaml holds: accepted.
    default = getattr(load_config(None, [f"model.family={family}"]).model, key)
    assert getattr(load_config(None, [f"model.family={family}", f"model.{key}={default}"]).model, key) == default


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_a_saved_run_config_with_every_key_loads_again(family, tmp_path):
    """A run writes every ModelConfig field, resolved (worker: run_files.write_config(cfg.to_yaml()))."""
    cfg = load_config(None, [f"model.family={family}", "model.width=32"])
    saved = yaml.safe_load(cfg.to_yaml())
    assert set(saved["model"]) == {f.name for f in __import__("dataclasses").fields(cfg.model)}
    path = tmp_path / "config.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg and config_from_dict(saved).digest() == cfg.digest()
    # An older ganaug wrote every field with the flat defaults of its time, before the keys
    # added later (ABSENT_MEANS); such a file loads too.
    from ganaug.config import ABSENT_MEANS

    old = {k: v for k, v in saved["model"].items() if f"model.{k}" not in ABSENT_MEANS}
    old.update(spectral_norm=saved["model"]["spectral_norm"], res_blocks=6, l1_weight=100.0, z_dim=128)
    assert config_from_dict({**saved, "model": old}).model.family == family


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_family_keys_cover_what_the_family_reads(family):
    """Perturbing every key a family does not declare leaves its models and loss unchanged."""
    import dataclasses

    from ganaug.families import FAMILIES
    from ganaug.models.registry import DataInfo, get_family

    fam, keys = get_family(family), FAMILIES.get(family).keys
    assert fam.name == family
    base = load_config(None, [f"model.family={family}"]).model
    other = dataclasses.replace(base, **{
        f.name: (not getattr(base, f.name)) if isinstance(getattr(base, f.name), bool) else getattr(base, f.name) + 1
        for f in dataclasses.fields(base) if f.name != "family" and f.name not in keys})
    data = DataInfo(resolution=32, channels=3, num_classes=4, class_names=list("abcd"))
    for fn in (fam.generator_kwargs, fam.discriminator_kwargs, fam.loss_kwargs):
        assert fn(other, data) == fn(base, data)


def _unknown_name_cases():
    """(registry name, call that looks up the name 'bogus')."""
    import numpy as np

    def family():
        from ganaug.models.registry import get_family
        get_family("bogus")

    def loss():
        from ganaug.losses import make_adversarial_loss
        make_adversarial_loss("bogus")

    def policy():
        from ganaug.augment import parse_policies
        parse_policies("translation,bogus")

    def transform():
        from ganaug.training.pairs import source_transform
        source_transform("bogus", np.zeros((1, 8, 8, 1), np.uint8))

    def batch_source():
        from ganaug.training.loop import BATCH_SOURCES
        BATCH_SOURCES.get("bogus")

    def metric():
        from ganaug.metrics import METRICS
        METRICS.check(["fid", "bogus"])

    def feature():
        from ganaug.metrics.features import build_extractor
        build_extractor("bogus")

    def filter_():
        from ganaug.generation import parse_filter
        parse_filter("bogus:1")

    def plan():
        from ganaug.labels import PlanContext, parse_plan
        parse_plan("bogus:1", PlanContext(num=4, num_classes=3))

    return [("GAN family", family), ("loss", loss), ("augmentation policy", policy),
            ("source transform", transform), ("batch source kind", batch_source), ("metric", metric),
            ("feature extractor", feature), ("filter", filter_), ("label plan", plan)]


@pytest.mark.parametrize("what, call", _unknown_name_cases(), ids=lambda c: c if isinstance(c, str) else "")
def test_every_registry_gives_the_same_unknown_name_error(what, call):
    from ganaug.errors import UserError
    from ganaug.registry import UnknownNameError

    with pytest.raises(UnknownNameError) as e:
        call()
    assert isinstance(e.value, UserError) and isinstance(e.value, LookupError)
    assert f"unknown {what} 'bogus'; choose from " in str(e.value) and "\n" not in str(e.value)


def test_registry_register_lookup_duplicates_and_lazy_entries():
    import sys

    from ganaug.registry import Registry, UnknownNameError

    reg: Registry = Registry("widget")
    assert reg.register("a", 1) == 1

    @reg.register("b")
    def b():
        return 2

    reg.register_lazy("c", "json:dumps")
    assert reg.names() == ["a", "b", "c"] and "c" in reg and "z" not in reg and list(reg) == reg.names()
    assert reg.get("b") is b and reg.get("c") is sys.modules["json"].dumps
    with pytest.raises(ValueError, match="widget 'a' is registered twice"):
        reg.register("a", 3)
    with pytest.raises(UnknownNameError, match=r"^--flag x: unknown widget 'bb' \(did you mean 'b'\?\); "
                                               r"choose from a, b, c$"):
        reg.get("bb", "--flag x")


def test_import_and_validate_config_without_torch():
    """Reading, validating and resolving any family's config stays light (no torch, no models)."""
    import subprocess
    import sys

    code = ("import sys; from ganaug.config import load_config\n"
            f"for f in {FAMILY_NAMES!r}: load_config(None, ['model.family=' + f])\n"
            "bad = [m for m in ('torch', 'ganaug.models', 'ray') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
