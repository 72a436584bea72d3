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
    from ganaug.training.worker import _diff_sections

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
