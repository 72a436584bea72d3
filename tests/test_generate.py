"""Bulk generation and translation on Ray Data (real Ray, real S3 endpoint, tiny 16x16 models).

One reference set (2,000 rows, 4 shards) is generated once per module; the other runs are
compared with it byte for byte: to S3, with another actor count, killed and resumed.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from ganaug import checkpoint, shards, storage
from ganaug.cli import main
from ganaug.config import ModelConfig
from ganaug.errors import UserError
from ganaug.generation import (
    DIE_AFTER_ENV,
    GenerateConfig,
    run_generate,
)
from ganaug.labels import (
    LabelPlanError,
    PlanContext,
    balance_counts,
    interleave,
    parse_plan,
)
from ganaug.models.registry import DataInfo, get_family
from ganaug.registry import UnknownNameError

REPO = Path(__file__).resolve().parents[1]
N, R = 2000, 500
CLASSES = [f"c{i}" for i in range(10)]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _save_tiny(folder: Path, family: str, num_classes: int) -> str:
    fam = get_family(family)
    names = CLASSES[:num_classes]
    kwargs = fam.generator_kwargs(ModelConfig(family=family, width=8, z_dim=16, max_width=32),
                                  DataInfo(16, 1, num_classes, names))
    torch.manual_seed(0)
    G = fam.build_generator(kwargs)
    meta = {"family": family, "kind": fam.kind, "generator_kwargs": kwargs, "resolution": 16, "channels": 1,
            "num_classes": num_classes, "class_names": names}
    return checkpoint.save_checkpoint(str(folder / family), meta=meta, generator_ema=G)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, s3):
    # s3 first: Ray (started later by ray_session) must inherit the AWS variables.
    root = tmp_path_factory.mktemp("ckpts")
    return {"cgan": _save_tiny(root, "cgan", 10), "dcgan": _save_tiny(root, "dcgan", 0),
            "pix2pix": _save_tiny(root, "pix2pix", 0)}


def _shas(manifest: dict) -> list[str]:
    return [f["sha256"] for f in manifest["files"]]


def _cli_json(capsys, argv: list[str]) -> dict:
    main(argv)
    lines = capsys.readouterr().out.strip().splitlines()
    return json.loads(lines[-1])


@pytest.fixture(scope="module")
def reference(ckpts, tmp_path_factory, ray_session):
    """The uninterrupted 2,000-row set (2 actors), made through the CLI."""
    out = str(tmp_path_factory.mktemp("ref") / "set")
    t = time.time()
    args = ["generate", "--checkpoint", ckpts["cgan"], "--num", str(N), "--out", out,
            "--rows-per-shard", str(R), "--seed", "7", "--workers", "2"]
    main(args)
    print(f"reference set: {time.time() - t:.1f}s")
    return out, args


# ----------------------------------------------------------------------------- no Ray

def test_label_plans():
    ctx = PlanContext(num=25, num_classes=10)
    assert parse_plan(None, ctx).labels().tolist() == [i % 10 for i in range(25)]
    assert parse_plan("0,3,7", ctx).labels()[:7].tolist() == [0, 3, 7, 0, 3, 7, 0]
    plan = parse_plan("counts:0=500,3=200", PlanContext(num=None, num_classes=10))
    assert plan.total == 700 and plan.counts() == {0: 500, 3: 200}
    head = plan.labels(0, 70)  # interleaved, not 500 zeros then 200 threes
    assert 15 <= int((head == 3).sum()) <= 25
    assert parse_plan(None, PlanContext(num=4, num_classes=0)).labels().tolist() == [-1] * 4
    assert interleave({1: 2, 2: 1}).tolist() == [1, 2, 1]
    # balance: deficit to the largest class, or --num split so totals are as even as possible
    assert balance_counts({0: 10, 1: 4, 2: 7}, 3, None) == {0: 0, 1: 6, 2: 3}
    assert balance_counts({0: 10, 1: 4, 2: 7}, 3, 5) == {0: 0, 1: 4, 2: 1}
    add = balance_counts({0: 10, 1: 4, 2: 7}, 3, 20)
    final = [h + add[c] for c, h in enumerate((10, 4, 7))]
    assert sum(add.values()) == 20 and max(final) - min(final) <= 1
    for spec, num, classes, match in [
        ("0,12", 5, 10, "unknown label 12"),
        ("counts:0=5,1=-2", None, 10, "negative count -2"),
        ("counts:0=5,1=2", 9, 10, "does not match"),
        ("0,1", 5, 0, "unconditional"),
        ("uniform", None, 10, "needs --num"),
    ]:
        with pytest.raises(LabelPlanError, match=match):
            parse_plan(spec, PlanContext(num=num, num_classes=classes))
    with pytest.raises(UnknownNameError, match=r"--labels zipf:3: unknown label plan 'zipf'; choose from uniform"):
        parse_plan("zipf:3", PlanContext(num=5, num_classes=10))


def test_encoders_and_table_bytes_are_deterministic():
    img = np.arange(16 * 16, dtype=np.uint8).reshape(16, 16, 1)
    for fmt in shards.ENCODERS:
        assert shards.encode_images(img[None], fmt) == shards.encode_images(img[None], fmt)
    assert np.array_equal(shards.decode_npy(shards.encode_images(img[None], "npy")[0]), img)
    assert Image.open(io.BytesIO(shards.encode_images(img[None], "jpeg")[0])).format == "JPEG"
    enc = shards.encode_images(np.stack([img, img]), "png")
    t = shards.build_table(enc, [0, 1], np.array([0, 1]), ["a", "b"], np.array([5, 6]), 0.7, "gid", "png")
    a = shards.table_bytes(t)
    time.sleep(1.1)  # no timestamps in the bytes
    assert shards.table_bytes(t) == a


def test_pool_asks_for_whole_resources_and_leaves_a_cpu_for_writes():
    from ganaug.generation.pipeline import pool_plan

    for cpus, workers, shards_left in [(2, None, 40), (2, 8, 40), (4, 2, 40), (4, None, 40), (16, None, 3),
                                       (16, 64, 100)]:
        p = pool_plan(workers, shards_left, False, cpus=cpus, gpus=0)
        # one whole CPU per sampling actor and per write task, never a fraction of the cluster
        assert p.cpus == 1.0 and p.write_cpus == 1.0 and p.gpus == 0
        assert p.actors == min(workers or cpus - 1, shards_left), (cpus, workers, p)
        # the actors started at once never hold every CPU: the write tasks always find one
        assert 1 <= p.initial <= p.actors and p.initial * p.cpus <= cpus - 1, (cpus, workers, p)
    # a one-CPU cluster cannot hold a whole actor beside a whole task: only there, halves
    one = pool_plan(None, 5, False, cpus=1, gpus=0)
    assert (one.actors, one.initial, one.cpus, one.write_cpus) == (1, 1, 0.5, 0.5)
    # --use-gpu asks for whole GPUs even where the cluster has none yet (GPU nodes scale from
    # zero), and as many as asked for, all at once: 8 actors are 8 GPUs, never 8 eighths of one.
    # A GPU actor holds no CPU, so GPU actors never starve the write tasks either.
    g = pool_plan(None, 4, True, cpus=2, gpus=0)
    assert (g.actors, g.initial, g.gpus, g.cpus) == (1, 1, 1.0, 0.0)
    g = pool_plan(8, 40, True, {"gen_node": 1}, cpus=2, gpus=1)
    assert (g.actors, g.initial, g.gpus, g.resources) == (8, 8, 1.0, {"gen_node": 1})


def test_resources_option_is_validated_and_kept_out_of_the_set_identity(ckpts, tmp_path, cli_error):
    from ganaug.generation import GenerationError, parse_resources, plan_generate

    assert parse_resources(None) == {} and parse_resources('{"gen_node": 1, "x": 0.5}') == {"gen_node": 1, "x": 0.5}
    ok = ["generate", "--checkpoint", ckpts["cgan"], "--num", "10", "--out", str(tmp_path / "o")]
    for value, match in [("{gen_node: 1}", "--resources {gen_node: 1}: not valid JSON"),
                         ("[1]", "expected a JSON object"), ('{"gen_node": -1}', "gen_node must be a non-negative"),
                         ('{"gen_node": "1"}', "must be a non-negative number"),
                         ('{"gen_node": true}', "must be a non-negative number"),
                         ('{"CPU": 2}', "CPU is not a custom resource"), ('{"g": 1.5}', "whole numbers")]:
        line = cli_error([*ok, "--resources", value])
        assert match in line and "--resources" in line, (value, line)
    line = cli_error(["translate", "--checkpoint", ckpts["pix2pix"], "--input", "builtin:digits[0:10]", "--out",
                      str(tmp_path / "t"), "--resources", "3"])
    assert "--resources 3: expected a JSON object" in line
    with pytest.raises(GenerationError, match="--resources"):
        parse_resources({"a": float("nan")})
    cfg = {"checkpoint": ckpts["cgan"], "out": str(tmp_path / "o"), "num": 10}
    plain, targeted = plan_generate(GenerateConfig(**cfg)), plan_generate(GenerateConfig(**cfg, resources='{"n": 1}'))
    assert targeted.run_info["resources"] == {"n": 1} and targeted.resources == {"n": 1}
    assert plain.arguments == targeted.arguments  # the same set, wherever it is made
    assert shards.fingerprint(plain.arguments) == shards.fingerprint(targeted.arguments)


def test_streamed_shard_equals_table_bytes_and_is_atomic(tmp_path, s3):
    img = np.arange(16 * 16, dtype=np.uint8).reshape(16, 16, 1)
    enc = shards.encode_images(np.stack([img] * 300), "png")
    t = shards.build_table(enc, range(300), np.arange(300) % 10, ["a"] * 300, np.arange(300), 0.7, "gid", "png")
    want = shards.table_bytes(t)
    for out in (str(tmp_path / "s"), s3.new_prefix("stream")):
        uri = storage.join(out, "part-00000.parquet")
        written = shards.write_shard(uri, t)
        assert storage.read_bytes(uri) == want
        assert (written.size, written.sha256) == (len(want), shards.sha256(want))

        def broken(f):
            f.write(want[:1000])  # half a shard, then the writer fails
            raise RuntimeError("disk on fire")

        with pytest.raises(storage.StorageError, match="disk on fire"):
            storage.write_stream(storage.join(out, "part-00001.parquet"), broken)
        # neither the half-written shard nor its temporary is left visible
        assert storage.listdir(out) == ["part-00000.parquet"]


def test_filter_hook_overgenerates_deterministically(ckpts, monkeypatch):
    from ganaug import generation
    from ganaug.sampling import Sampler

    class Bright:  # accepts images brighter than a threshold: judged per image
        def accept(self, images, labels):
            return images.reshape(len(images), -1).mean(1) > 240.0  # about half of this model's images

    generation._load_filter_plugins()  # plugins register into the real registry, not the copy
    monkeypatch.setattr(generation.filters, "FILTERS", generation.FILTERS.copy())
    generation.register_filter("bright", build=lambda arg, sampler: Bright())
    entry, arg = generation.parse_filter("bright:1")
    sampler = Sampler.from_checkpoint(ckpts["cgan"], device="cpu")
    rows, labels = np.arange(40), np.arange(40) % 10
    whole = generation.generate_rows(sampler, rows, labels, 5, 1.0, 40, entry.build(arg, sampler))
    halves = [generation.generate_rows(sampler, rows[a:b], labels[a:b], 5, 1.0, 40, entry.build(arg, sampler))
              for a, b in ((0, 17), (17, 40))]
    assert np.array_equal(whole[0], np.concatenate([h[0] for h in halves]))
    assert np.array_equal(whole[1], np.concatenate([h[1] for h in halves]))
    seeds = whole[1]
    assert ((seeds - 5 - rows) % 40 == 0).all()  # candidate j of row i: seed S + i + j*N
    kept = seeds != 5 + rows
    assert kept.any() and whole[2] < kept.sum()  # some rows were re-drawn, most then accepted
    ok = Bright().accept(whole[0], labels)
    assert int((~ok).sum()) == whole[2]          # only fallbacks (all tries rejected) fail the filter
    i = int(np.flatnonzero(kept & ok)[0])        # a re-drawn row is the Sampler's image for its seed
    assert np.array_equal(sampler.generate([int(seeds[i])], [int(labels[i])])[0], whole[0][i])


def test_cli_errors_before_work(ckpts, tmp_path, cli_error):
    ok = ["--checkpoint", ckpts["cgan"], "--out", str(tmp_path / "o")]
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    cases = [
        (["generate", *ok, "--num", "10", "--labels", "0,42"], "unknown label 42"),
        (["generate", *ok, "--labels", "counts:1=5,2=-1"], "negative count"),
        (["generate", *ok, "--num", "-3"], "--num must be >= 1"),
        (["generate", *ok, "--num", "10", "--format", "gif"], "--format gif"),
        (["generate", *ok, "--num", "10", "--filter", "sharpness:0.9"], "unknown filter 'sharpness'"),
        (["generate", "--checkpoint", ckpts["cgan"], "--num", "10", "--out", str(blocker / "sub")], "not writable"),
        (["generate", "--checkpoint", ckpts["pix2pix"], "--num", "10", "--out", str(tmp_path / "o")],
         "not a noise generator"),
        (["generate", "--checkpoint", ckpts["dcgan"], "--num", "10", "--labels", "3", "--out", str(tmp_path / "o")],
         "unconditional"),
        (["generate", "--checkpoint", str(tmp_path / "nope"), "--num", "10", "--out", str(tmp_path / "o")],
         "checkpoint not found"),
        (["translate", *ok, "--input", "builtin:digits"], "not a translation model"),
        (["translate", "--checkpoint", ckpts["pix2pix"], "--out", str(tmp_path / "o"), "--input", "bogus:x"],
         "unknown dataset scheme"),
    ]
    for argv, match in cases:
        t = time.time()
        line = cli_error(argv)
        assert match in line, (argv, line)
        assert time.time() - t < 20
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").glob("part-*"))


# ----------------------------------------------------------------------------- Ray Data

@pytest.mark.timeout(300)
def test_generate_local_schema_manifest_and_readers(reference, ckpts, capsys, cli_error):
    out, args = reference
    names = sorted(os.listdir(out))
    assert names == ["_manifest.json"] + [f"part-{i:05d}.parquet" for i in range(N // R)]
    man = json.loads(Path(out, "_manifest.json").read_text())
    assert man["rows"] == N and man["schema_version"] == shards.SCHEMA_VERSION
    assert man["counts"] == {str(c): N // 10 for c in range(10)}
    assert man["checkpoint"]["id"] == checkpoint.checkpoint_id(ckpts["cgan"])
    assert man["arguments"]["seed"] == 7 and man["created"]
    for f in man["files"]:
        data = Path(out, f["name"]).read_bytes()
        assert shards.sha256(data) == f["sha256"] and f["rows"] == R

    table = pq.read_table(out)
    assert table.schema.names == ["image", "label", "class_name", "seed", "truncation", "generator"]
    assert table.schema.field("image").type == pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    assert table.schema.field("truncation").type == pa.float32()
    rows = table.slice(40, 3).to_pylist()
    assert [r["seed"] for r in rows] == [47, 48, 49]
    assert [r["image"]["path"] for r in rows] == ["00000040.png", "00000041.png", "00000042.png"]
    assert [r["label"] for r in rows] == [0, 1, 2] and rows[0]["class_name"] == "c0"
    im = Image.open(io.BytesIO(rows[0]["image"]["bytes"]))
    assert im.format == "PNG" and im.size == (16, 16)

    # Row i equals the Sampler's image for seed S+i (what serving returns).
    from ganaug.sampling import Sampler

    want = Sampler.from_checkpoint(ckpts["cgan"], device="cpu").generate([47], [0])[0]
    assert np.array_equal(np.asarray(im)[..., None], want)

    import pandas as pd
    import ray

    df = pd.read_parquet(out)
    assert len(df) == N and df["label"].value_counts().to_dict() == {c: N // 10 for c in range(10)}
    ds = ray.data.read_parquet(out)
    assert ds.count() == N and set(ds.schema().names) >= {"image", "label", "seed"}
    from ganaug.data import load_dataset

    loaded = load_dataset(f"parquet:{out}[0:100]")
    assert loaded.images.shape == (100, 16, 16, 1) and loaded.labels[:3].tolist() == [0, 1, 2]

    # The same command again: already complete, nothing regenerated; JSON last line.
    summary = _cli_json(capsys, args)
    assert summary["generated_rows"] == 0 and summary["rows"] == N and summary["reused_shards"] == N // R
    # Different arguments into the same folder: refused with one line.
    line = cli_error([a if a != "7" else "8" for a in args])
    assert "different arguments" in line and "seed" in line


@pytest.mark.timeout(300)
def test_generate_s3_and_other_actor_count_identical(reference, ckpts, s3, ray_session, tmp_path, capsys):
    out, args = reference
    ref = json.loads(Path(out, "_manifest.json").read_text())
    s3_out = s3.new_prefix("gen")
    summary = _cli_json(capsys, [a if a != out else s3_out for a in args])
    assert summary["rows"] == N and summary["shards"] == N // R and summary["images_per_s"] > 0
    assert summary["counts"] == ref["counts"]
    man = storage.read_json(storage.join(s3_out, "_manifest.json"))
    assert _shas(man) == _shas(ref)
    keys = [o["Key"].split("/", 1)[1] for o in s3.client().list_objects_v2(
        Bucket=s3.bucket, Prefix=s3_out.split("/", 3)[3])["Contents"]]
    # ('' is the folder marker pyarrow leaves when a file in a "folder" is deleted)
    assert sorted(k for k in keys if k) == ["_manifest.json"] + [f"part-{i:05d}.parquet" for i in range(N // R)]
    from ganaug.data import load_dataset

    loaded = load_dataset(f"parquet:{s3_out}[1995:2000]")
    assert loaded.labels.tolist() == [5, 6, 7, 8, 9]

    # One actor instead of two: the same bytes.
    one = run_generate(GenerateConfig(checkpoint=ckpts["cgan"], out=str(tmp_path / "one"), num=N,
                                      rows_per_shard=R, seed=7, workers=1), progress=False)
    assert one["rows"] == N
    assert _shas(json.loads((tmp_path / "one" / "_manifest.json").read_text())) == _shas(ref)


@pytest.mark.timeout(300)
def test_kill_and_resume_is_identical(reference, ckpts, ray_session, tmp_path):
    out, args = reference
    # Small shards: the stages run ahead of the driver, so a kill after its first result must
    # still leave shards to make. An uninterrupted run of the same arguments is the reference.
    rk = 100
    ref_out = tmp_path / "uninterrupted"
    run_generate(GenerateConfig(checkpoint=ckpts["cgan"], out=str(ref_out), num=N, rows_per_shard=rk, seed=7,
                                workers=2), progress=False)
    ref = json.loads((ref_out / "_manifest.json").read_text())
    killed = tmp_path / "killed"
    argv = [a if a != out else str(killed) for a in args]
    argv[argv.index("--workers") + 1] = "1"
    argv[argv.index("--rows-per-shard") + 1] = str(rk)
    env = dict(os.environ, RAY_ADDRESS=ray_session.get_runtime_context().gcs_address, **{DIE_AFTER_ENV: "1"})
    proc = subprocess.run([sys.executable, "-m", "jobs.generate", *argv[1:]], check=False, cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 3, proc.stderr[-2000:]
    present = sorted(p.name for p in killed.glob("part-*.parquet"))
    assert 1 <= len(present) < N // rk and not (killed / "_manifest.json").exists()
    # An incomplete set is refused by readers and `ganaug info`.
    from ganaug.describe import describe

    with pytest.raises(UserError, match="incomplete"):
        describe(str(killed))
    # A torn file where a missing shard goes (e.g. a foreign writer): must be regenerated.
    missing = [f"part-{i:05d}.parquet" for i in range(N // rk) if f"part-{i:05d}.parquet" not in present]
    (killed / missing[-1]).write_bytes(b"PAR1 not really")
    before = {n: (killed / n).stat().st_mtime_ns for n in present}
    # Each finished shard has its record (rows, size, sha256, counts), written after it. One
    # record that disagrees with its shard's size: that shard is checked the long way.
    records = sorted(p.name for p in (killed / shards.RECORDS).glob("*.json"))
    # (a shard the kill caught between its write and its record's has none; shard 0, reported
    # to the driver before the kill, has one)
    assert records[0] == f"{present[0]}.json" and set(records) <= {f"{n}.json" for n in present}
    rec = json.loads((killed / shards.record_name(0)).read_text())
    assert rec["size"] == (killed / present[0]).stat().st_size and rec["rows"] == rk
    (killed / shards.record_name(0)).write_text(json.dumps(dict(rec, size=rec["size"] + 1)))

    summary = run_generate(GenerateConfig(checkpoint=ckpts["cgan"], out=str(killed), num=N, rows_per_shard=rk,
                                          seed=7, workers=1), progress=False)
    assert summary["reused_shards"] == len(present)
    assert summary["reused_checked_by_record"] == len(records) - 1  # these were not downloaded
    assert summary["generated_rows"] == N - rk * len(present)
    assert {n: (killed / n).stat().st_mtime_ns for n in present} == before  # not rewritten
    man = json.loads((killed / "_manifest.json").read_text())
    assert _shas(man) == _shas(ref) and man["counts"] == ref["counts"]
    assert not list(killed.glob(".*"))  # no temporaries, no intent file left behind
    assert not (killed / shards.INTENT).exists() and not (killed / shards.RECORDS).exists()
    # the same rows as the reference set's bigger shards
    assert pq.read_table(killed).equals(pq.read_table(out))


@pytest.mark.timeout(300)
def test_resume_in_another_environment_is_refused_unless_allowed(reference, ckpts, ray_session, tmp_path):
    import shutil

    from ganaug.generation import GenerationError

    out, _ = reference
    ref = json.loads(Path(out, "_manifest.json").read_text())
    env = ref["environment"]
    assert env["torch"] == torch.__version__ and env["device_type"] == "cpu"
    # An unfinished copy of the set whose shards were made under another torch and GPU.
    unfinished = tmp_path / "set"
    shutil.copytree(out, unfinished)
    (unfinished / "_manifest.json").unlink()
    (unfinished / "part-00003.parquet").unlink()
    other = dict(env, torch="0.0.0", device_type="cuda", gpu_name="Some GPU")
    (unfinished / shards.INTENT).write_text(json.dumps(
        {"fingerprint": ref["fingerprint"], "arguments": ref["arguments"], "environment": other}))
    cfg = GenerateConfig(checkpoint=ckpts["cgan"], out=str(unfinished), num=N, rows_per_shard=R, seed=7, workers=1)
    expected = (f"3 of 4 shards were made in another environment (torch 0.0.0 -> {torch.__version__}; "
                "device_type cuda -> cpu; gpu_name Some GPU -> None); finish the set there, pass --allow-env-change")
    with pytest.raises(GenerationError, match=re.escape(expected)):
        run_generate(cfg, progress=False)
    assert not (unfinished / "part-00003.parquet").exists()  # nothing was added to the mix

    cfg.allow_env_change = True
    summary = run_generate(cfg, progress=False)
    assert summary["reused_shards"] == 3 and summary["generated_rows"] == R
    man = json.loads((unfinished / "_manifest.json").read_text())
    assert man["environment"] == env and man["environment_changed_from"] == other
    assert _shas(man) == _shas(ref)  # same environment really, so the bytes agree


def test_use_gpu_waits_for_a_gpu_and_says_so(ray_session):
    """--use-gpu on a cluster with no GPU now (GPU workers scale from zero): no refusal, a line
    naming what it waits for; here no autoscaler adds one, so the probe's timeout ends it."""
    from ganaug.errors import UserError
    from ganaug.raycluster import probe_environment

    lines: list[str] = []
    with pytest.raises(UserError, match="no GPU became available within 1 s"):
        probe_environment(True, echo=lines.append, every_s=0.3, timeout_s=1.0)
    assert lines and lines[0].startswith("waiting for 1 GPU (GPUs in the cluster now: 0;")
    assert probe_environment(False)["device_type"] == "cpu"
    # --resources: the probe asks for them too, so it waits for (and reports) the node type
    lines.clear()
    with pytest.raises(UserError, match="no CPU with gen_node 1 became available within 1 s"):
        probe_environment(False, echo=lines.append, every_s=0.3, timeout_s=1.0, resources={"gen_node": 1})
    assert "gen_node 1 per actor, in the cluster now: 0;" in lines[0]


def _skewed_parquet(folder: Path) -> tuple[str, dict[int, int]]:
    hist = {0: 30, 1: 12, 2: 5, 3: 0, 4: 30, 5: 1, 6: 29, 7: 30, 8: 2, 9: 20}
    labels = np.array([c for c, n in hist.items() for _ in range(n)], dtype=np.int64)
    img = np.zeros((16, 16, 1), np.uint8)
    enc = shards.encode_images(np.repeat(img[None], len(labels), 0), "png")
    t = shards.build_table(enc, range(len(labels)), labels, [CLASSES[i] for i in labels],
                           np.zeros(len(labels)), 1.0, "real", "png")
    folder.mkdir()
    pq.write_table(t, folder / "skewed.parquet")
    return f"parquet:{folder / 'skewed.parquet'}", hist


@pytest.mark.timeout(300)
def test_balance_plan_fills_the_deficit(ckpts, ray_session, tmp_path):
    spec, hist = _skewed_parquet(tmp_path / "real")
    out = tmp_path / "balanced"
    summary = run_generate(GenerateConfig(checkpoint=ckpts["cgan"], out=str(out), labels=f"balance:{spec}",
                                          rows_per_shard=64, workers=1, format="jpeg"), progress=False)
    deficit = {c: 30 - n for c, n in hist.items() if 30 - n}
    assert summary["rows"] == sum(deficit.values())
    assert summary["counts"] == {str(c): n for c, n in deficit.items()}
    man = json.loads((out / "_manifest.json").read_text())
    assert man["label_plan"]["added"] == {str(c): n for c, n in deficit.items()}
    t = pq.read_table(out)
    final = {c: hist[c] + int((t.column("label").to_numpy() == c).sum()) for c in hist}
    assert set(final.values()) == {30}
    first = t.column("image")[0].as_py()
    assert first["path"].endswith(".jpg") and Image.open(io.BytesIO(first["bytes"])).format == "JPEG"


@pytest.mark.timeout(300)
def test_unconditional_npy(ckpts, ray_session, tmp_path):
    out = tmp_path / "dc"
    summary = run_generate(GenerateConfig(checkpoint=ckpts["dcgan"], out=str(out), num=50, rows_per_shard=32,
                                          format="npy", seed=3, workers=1), progress=False)
    assert summary["counts"] == {"-1": 50} and summary["shards"] == 2
    t = pq.read_table(out)
    assert set(t.column("label").to_pylist()) == {-1} and set(t.column("class_name").to_pylist()) == {""}
    arr = shards.decode_npy(t.column("image")[0].as_py()["bytes"])
    from ganaug.sampling import Sampler

    assert np.array_equal(arr, Sampler.from_checkpoint(ckpts["dcgan"], device="cpu").generate([3])[0])


@pytest.mark.timeout(300)
def test_translate_pix2pix(ckpts, ray_session, tmp_path, capsys):
    out = tmp_path / "tr"
    summary = _cli_json(capsys, ["translate", "--checkpoint", ckpts["pix2pix"], "--input", "builtin:digits[100:400]",
                                 "--out", str(out), "--rows-per-shard", "128", "--workers", "1"])
    assert summary["rows"] == 300 and summary["shards"] == 3
    t = pq.read_table(out)
    assert t.schema.names[-1] == "source" and t.num_rows == 300
    from ganaug.data import load_dataset
    from ganaug.sampling import Sampler

    real = load_dataset("builtin:digits[100:400]", resolution=16, channels=1)
    assert t.column("label").to_pylist() == real.labels.tolist()
    assert t.column("source").to_pylist() == real.sources
    want = Sampler.from_checkpoint(ckpts["pix2pix"], device="cpu").translate(real.images[:2])
    got = np.asarray(Image.open(io.BytesIO(t.column("image")[1].as_py()["bytes"])))
    assert np.array_equal(got[..., None], want[1])
    assert json.loads((out / "_manifest.json").read_text())["columns"][-1] == "source"
    import ray

    assert ray.data.read_parquet(str(out)).count() == 300


def test_refusals_to_mix_sets_are_their_own_error(tmp_path):
    """The refusals that --overwrite lifts raise OtherSetError (a GenerationError), so a caller
    such as the demo can replace another set without matching message text."""
    from ganaug.generation import GenerationError, OtherSetError
    from ganaug.generation import outdir as generation_outdir

    out = tmp_path / "set"
    out.mkdir()
    (out / shards.MANIFEST).write_text(json.dumps({"fingerprint": "other", "arguments": {"seed": 1}}))
    with pytest.raises(OtherSetError, match="different arguments") as info:
        generation_outdir.prepare(str(out), {"seed": 0}, overwrite=False)
    assert isinstance(info.value, GenerationError)
    (out / shards.MANIFEST).unlink()
    (out / shards.shard_name(0)).write_bytes(b"x")
    with pytest.raises(OtherSetError, match="unknown origin"):
        generation_outdir.prepare(str(out), {"seed": 0}, overwrite=False)
    assert generation_outdir.prepare(str(out), {"seed": 0}, overwrite=True) is None
    assert not (out / shards.shard_name(0)).exists()
