"""`ganaug translate --restyle` (#18): real images projected into a StyleGAN2's W+ and restyled
by layer group, on Ray Data, in the shard format with the `source` column.

The model is a tiny untrained conditional StyleGAN2 (the library's projection and the class
preservation of restyling are tested on their own in test_projection.py); here the question is
the command: rows, labels, sources and style seeds line up, the set is deterministic (a shard
made again has the same bytes), the projection's error is reported, and bad requests fail in
one line before Ray starts.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from ganaug import checkpoint, shards
from ganaug.config import ModelConfig
from ganaug.data import load_dataset
from ganaug.generation import GenerationError, TranslateConfig, plan_translate, run_translate
from ganaug.models.registry import DataInfo, get_family

pytestmark = pytest.mark.usefixtures("one_torch_thread")

INPUT = "builtin:digits[0:12]"


def _tiny(folder, family: str, class_names: list[str]) -> str:
    fam = get_family(family)
    kwargs = fam.generator_kwargs(ModelConfig(family=family, width=8, z_dim=16, max_width=16),
                                  DataInfo(16, 1, len(class_names), class_names))
    torch.manual_seed(0)
    meta = {"family": family, "kind": fam.kind, "generator_kwargs": kwargs, "resolution": 16, "channels": 1,
            "num_classes": len(class_names), "class_names": class_names}
    return checkpoint.save_checkpoint(str(folder / family), meta=meta, generator_ema=fam.build_generator(kwargs))


@pytest.fixture(scope="module")
def digits():
    return load_dataset(INPUT, 16, 1)


@pytest.fixture(scope="module")
def models(tmp_path_factory, digits):
    root = tmp_path_factory.mktemp("restyle-models")
    names = list(digits.class_names)
    return {"stylegan2": _tiny(root, "stylegan2", names), "cgan": _tiny(root, "cgan", names),
            "other_classes": _tiny(root / "other", "stylegan2", [f"c{i}" for i in range(len(names))])}


@pytest.fixture(autouse=True)
def _domain_cache(tmp_path_factory, monkeypatch):
    # the projection's feature network is cached by fingerprint: keep it out of ~/.cache
    monkeypatch.setenv("GANAUG_CACHE", str(tmp_path_factory.getbasetemp() / "ganaug-cache"))


def _cfg(models, out, **kw) -> TranslateConfig:
    base = dict(checkpoint=models["stylegan2"], input=INPUT, out=str(out), restyle="fine", style_seed=7, variants=2,
                project_steps=10, rows_per_shard=9, workers=1)
    return TranslateConfig(**{**base, **kw})


def _decode(table) -> np.ndarray:
    return np.stack([np.asarray(Image.open(io.BytesIO(c["bytes"]))) for c in table.column("image").to_pylist()])


def test_restyle_writes_variants_of_each_input_row(models, digits, ray_session, tmp_path):
    out = tmp_path / "fine"
    summary = run_translate(_cfg(models, out), progress=False)
    # 12 input rows x 2 variants in shards of 9: input 4 (rows 8, 9) straddles shards 0 and 1
    assert summary["rows"] == 24 and summary["shards"] == 3
    t = pq.read_table(out)
    assert t.schema.names[-1] == "source"
    pick = np.arange(24) // 2
    assert t.column("label").to_pylist() == digits.labels[pick].tolist()
    assert t.column("source").to_pylist() == [digits.sources[i] for i in pick]
    assert t.column("seed").to_pylist() == list(range(7, 7 + 24))  # row r: style seed 7 + r
    images = _decode(t)
    assert images.shape == (24, 16, 16) and not np.array_equal(images[0], images[1])  # two styles of one image

    p = summary["projection"]
    assert p["images"] == 12 + 1  # input 4 is projected by both shards that hold one of its rows
    assert p["mse_projected"] < p["mse_mean_latent"]

    manifest = json.loads((out / shards.MANIFEST).read_text())
    restyle = manifest["restyle"]
    assert restyle["group"] == "fine" and restyle["variants"] == 2 and restyle["style_seed"] == 7
    assert restyle["features"]["loss"] == "pixel+domain" and restyle["features"]["feature_rows"] == 12
    assert manifest["arguments"]["task"] == "restyle"

    # Deterministic per (image, seed): the same command elsewhere makes the same bytes.
    again = run_translate(_cfg(models, tmp_path / "again"), progress=False)
    shas = json.loads((tmp_path / "again" / shards.MANIFEST).read_text())["files"]
    assert [f["sha256"] for f in shas] == [f["sha256"] for f in manifest["files"]] and again["rows"] == 24

    # Another style seed restyles the same projections differently.
    other = run_translate(_cfg(models, tmp_path / "seed8", style_seed=8, variants=1), progress=False)
    assert other["rows"] == 12
    imgs8 = _decode(pq.read_table(tmp_path / "seed8"))
    assert not np.array_equal(imgs8[0], images[0])
    # coarse: the same styles on the other layers (the image's texture on a new shape)
    coarse = run_translate(_cfg(models, tmp_path / "coarse", restyle="coarse"), progress=False)
    assert coarse["rows"] == 24 and not np.array_equal(_decode(pq.read_table(tmp_path / "coarse")), images)


@pytest.mark.parametrize("change, message", [
    (dict(checkpoint="cgan"), "--restyle needs a StyleGAN2 checkpoint"),
    (dict(checkpoint="other_classes"), "are not the model's"),
    (dict(restyle="texture"), "--restyle must be one of coarse, middle, fine"),
    (dict(variants=0), "--variants must be >= 1"),
    (dict(project_steps=0), "--project-steps must be >= 1"),
    (dict(restyle=None), "--style-seed applies only with --restyle"),
])
def test_bad_restyle_requests_fail_before_ray(models, tmp_path, change, message):
    if "checkpoint" in change:
        change = {"checkpoint": models[change["checkpoint"]]}
    with pytest.raises(GenerationError, match=message):
        plan_translate(_cfg(models, tmp_path / "bad", **change))
    assert not (tmp_path / "bad").exists()


def test_a_stylegan2_without_restyle_points_at_it(models, tmp_path):
    with pytest.raises(GenerationError, match="translate --restyle"):
        plan_translate(TranslateConfig(checkpoint=models["stylegan2"], input=INPUT, out=str(tmp_path / "x")))
