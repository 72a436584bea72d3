"""Checkpoint folder format: round trip, content id, refusal of incomplete/corrupt folders."""

import json

import numpy as np
import pytest
import torch

from ganaug import checkpoint, storage
from ganaug.checkpoint import CheckpointError
from ganaug.config import ModelConfig
from ganaug.models.registry import DataInfo, get_family
from ganaug.sampling import Sampler


def tiny_cgan(seed=0):
    fam = get_family("cgan")
    info = DataInfo(16, 1, 10, [str(i) for i in range(10)])
    mc = ModelConfig(family="cgan", width=8, z_dim=16, embed_dim=8)
    torch.manual_seed(seed)
    G = fam.build_generator(fam.generator_kwargs(mc, info))
    D = fam.build_discriminator(fam.discriminator_kwargs(mc, info))
    meta = {"family": "cgan", "kind": fam.kind, "generator_kwargs": fam.generator_kwargs(mc, info),
            "resolution": 16, "channels": 1, "num_classes": 10, "class_names": info.class_names, "step": 3}
    return G, D, meta


def save_tiny(uri, seed=0):
    G, D, meta = tiny_cgan(seed)
    opt = torch.optim.Adam(G.parameters())
    state = {"step": 3, "optimizer_g": opt.state_dict(), "rng": torch.get_rng_state(), "ada_p": 0.25}
    checkpoint.save_checkpoint(uri, meta=meta, generator_ema=G, generator=G, discriminator=D,
                               train_state=state, samples_png=b"\x89PNG fake-but-unused")
    return G, meta


def test_roundtrip_local_and_ids(tmp_path):
    uri = str(tmp_path / "run" / "checkpoints" / checkpoint.step_dir_name(3))
    G, meta = save_tiny(uri)
    names = set(storage.listdir(uri))
    assert {"model.json", "generator_ema.safetensors", "generator.safetensors",
            "discriminator.safetensors", "train_state.pt", "samples.png"} <= names
    loaded = checkpoint.load_meta(uri)
    assert loaded["family"] == "cgan" and loaded["ganaug_version"]
    G2, _ = checkpoint.build_generator(uri)
    for k, v in G.state_dict().items():
        assert torch.equal(v, G2.state_dict()[k]), k
    state = checkpoint.load_train_state(uri)
    assert state["step"] == 3 and state["ada_p"] == 0.25
    cid = checkpoint.checkpoint_id(uri)
    assert len(cid) == 16 and cid == checkpoint.checkpoint_id(uri)
    other = str(tmp_path / "other")
    save_tiny(other, seed=1)
    assert checkpoint.checkpoint_id(other) != cid
    assert checkpoint.latest_checkpoint(str(tmp_path / "run")) == uri
    assert checkpoint.resolve_checkpoint(str(tmp_path / "run")) == uri


def test_sampler_from_checkpoint_is_batch_invariant(tmp_path):
    uri = str(tmp_path / "ck")
    save_tiny(uri)
    s = Sampler.from_checkpoint(uri)
    seeds = list(range(100, 140))
    labels = [i % 10 for i in range(40)]
    all_at_once = s.generate(seeds, labels, 0.8)
    one_by_one = np.concatenate([s.generate([sd], [lb], 0.8) for sd, lb in zip(seeds, labels)])
    assert all_at_once.dtype == np.uint8 and all_at_once.shape == (40, 16, 16, 1)
    assert np.array_equal(all_at_once, one_by_one)
    with pytest.raises(Exception, match="out of range"):
        s.generate([1], [10])


def test_missing_marker_is_incomplete(tmp_path):
    uri = str(tmp_path / "ck")
    save_tiny(uri)
    storage.delete(storage.join(uri, "model.json"))
    with pytest.raises(CheckpointError, match="incomplete checkpoint"):
        checkpoint.load_meta(uri)
    assert checkpoint.list_checkpoints(str(tmp_path)) == []


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        Sampler.from_checkpoint(str(tmp_path / "nope"))


@pytest.mark.parametrize("victim", ["generator_ema.safetensors", "train_state.pt"])
def test_corrupt_or_missing_files_are_refused(tmp_path, victim):
    uri = str(tmp_path / "ck")
    save_tiny(uri)
    path = storage.join(uri, victim)
    data = storage.read_bytes(path)
    storage.write_bytes(path, data[: len(data) // 2])
    loader = checkpoint.build_generator if victim.startswith("generator") else checkpoint.load_train_state
    with pytest.raises(CheckpointError, match=victim):
        loader(uri)
    storage.delete(path)
    with pytest.raises(CheckpointError, match=f"lacks {victim}"):
        loader(uri)


def test_train_state_never_unpickles_arbitrary_objects(tmp_path):
    uri = str(tmp_path / "ck")
    G, D, meta = tiny_cgan()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    checkpoint.save_checkpoint(uri, meta=meta, generator_ema=G, train_state={"x": Evil()})
    with pytest.raises(CheckpointError, match="train_state.pt"):
        checkpoint.load_train_state(uri)


def test_latest_skips_a_checkpoint_whose_upload_is_torn(tmp_path):
    """Ray Train uploads a checkpoint's files in no set order: model.json may arrive before the
    weights. A step folder counts only when every file has the size model.json records."""
    run = str(tmp_path / "run")
    for step in (10, 20):
        save_tiny(storage.join(run, "checkpoints", checkpoint.step_dir_name(step)))
    newest = storage.join(run, "checkpoints", checkpoint.step_dir_name(20))
    weights = storage.join(newest, "generator.safetensors")
    whole = storage.read_bytes(weights)
    storage.write_bytes(weights, whole[: len(whole) // 2])        # still arriving
    assert checkpoint.latest_checkpoint(run).endswith("step-0000010")
    assert [s for s, _ in checkpoint.list_checkpoints(run)] == [10]
    storage.delete(weights)                                       # not there yet
    assert checkpoint.latest_checkpoint(run).endswith("step-0000010")
    storage.write_bytes(weights, whole)                           # arrived
    assert checkpoint.latest_checkpoint(run) == newest
    assert checkpoint.resolve_checkpoint(run) == newest


def test_checkpoint_on_s3(s3):
    uri = s3.new_prefix() + "/ck"
    G, meta = save_tiny(uri)
    s = Sampler.from_checkpoint(uri)
    assert s.generate([1, 2], [3, 4]).shape == (2, 16, 16, 1)
    assert json.loads(storage.read_bytes(uri + "/model.json"))["family"] == "cgan"


def _edit_meta(uri, **changes):
    path = storage.join(uri, checkpoint.MARKER)
    meta = json.loads(storage.read_bytes(path))
    meta.update(changes)
    storage.write_bytes(path, json.dumps(meta).encode())


@pytest.mark.parametrize("field,value,match", [
    ("resolution", "16", "field 'resolution' must be an integer"),
    ("channels", 7, "field 'channels' must be 1 or 3"),
    ("class_names", [1, 2], "field 'class_names' must be a list of strings"),
    ("class_names", ["a", "b"], "2 names for num_classes 10"),
    ("family", "../../etc", "field 'family' must be a family name"),
    ("generator_kwargs", {"width": 10 ** 9}, "generator_kwargs.width' is out of range"),
])
def test_model_json_fields_are_validated_before_building(tmp_path, cli_error, field, value, match):
    uri = str(tmp_path / "ck")
    save_tiny(uri)
    _edit_meta(uri, **{field: value})
    with pytest.raises(CheckpointError, match=match):
        checkpoint.build_generator(uri)
    assert match in cli_error(["sample", "--checkpoint", uri, "--out", str(tmp_path / "g.png")])


def test_checkpoint_from_another_version(tmp_path, cli_error):
    uri = str(tmp_path / "ck")
    save_tiny(uri)
    _edit_meta(uri, ganaug_version="9.0.0")
    line = cli_error(["info", uri])
    assert "written by ganaug 9.0.0, this is ganaug" in line and "model.json" in line
    _edit_meta(uri, ganaug_version=None)
    assert "no valid ganaug_version" in cli_error(["info", uri])
