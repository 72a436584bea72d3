"""The HTTP service: real Ray Serve over real HTTP on 127.0.0.1, with tiny untrained models.

One app ("ganaug-test") serves a cgan, a dcgan and a pix2pix for the whole module; a second,
deliberately tight app ("ganaug-tight") checks overload (503) and the LRU bound. Both are
deleted and Serve shut down at the end, so other modules sharing the Ray session are unaffected.
"""

from __future__ import annotations

import io
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from serve_fixtures import (  # noqa: F401  (fixtures)
    AUTH, CH, K, LIMITS, RES, TOKEN, TOKEN_ENV, ckpts, make_checkpoint, samplers, service)
from serve_fixtures import b64s as _b64s
from serve_fixtures import png as _png


# ------------------------------------------------------------------------- success paths

def test_healthz_needs_no_auth(service):
    r = service.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_models_lists_every_model(service):
    r = service.get("/v1/models", headers=AUTH)
    assert r.status_code == 200
    models = {m["id"]: m for m in r.json()["models"]}
    assert set(models) == {"cgan", "dcgan", "pix2pix"}
    assert models["cgan"]["class_names"] == [f"c{i}" for i in range(K)]
    assert models["cgan"]["conditional"] and not models["dcgan"]["conditional"]
    assert models["pix2pix"]["kind"] == "translation"
    for m in models.values():
        assert (m["resolution"], m["channels"]) == (RES, CH) and m["family"] == m["id"]


def test_samples_are_byte_identical_to_the_sampler(service, samplers):
    labels = [3, 3, 7, 0, 9]
    r = service.post("/v1/models/cgan/samples", headers=AUTH,
                     json={"n": 5, "labels": labels, "seed": 42, "truncation": 0.7, "format": "png"})
    assert r.status_code == 200, r.text
    ans = r.json()
    assert ans["model"] == "cgan" and ans["generator"] == samplers["cgan"].checkpoint_id
    assert [im["seed"] for im in ans["images"]] == [42, 43, 44, 45, 46]
    assert [im["label"] for im in ans["images"]] == labels
    expected = samplers["cgan"].generate(range(42, 47), labels, 0.7)
    assert _b64s(ans) == [_png(im) for im in expected]
    # ... and to rows 0..4 of `ganaug generate --seed 42` with these labels (its row function + encoder).
    from ganaug import shards
    from ganaug.generation import generate_rows

    rows, _, _ = generate_rows(samplers["cgan"], np.arange(5), np.asarray(labels), 42, 0.7, 5)
    assert _b64s(ans) == [shards.get_encoder("png").encode_one(im) for im in rows]

    # "label": one class for all; image j still uses seed + j, so it equals the labels form.
    r = service.post("/v1/models/cgan/samples", headers=AUTH, json={"n": 2, "label": 3, "seed": 42, "truncation": 0.7})
    assert _b64s(r.json())[:2] == [_png(im) for im in expected[:2]]

    # Unconditional: label -1, no labels given; defaults seed 0, truncation 1.
    r = service.post("/v1/models/dcgan/samples", headers=AUTH, json={"n": 3})
    assert r.status_code == 200, r.text
    ans = r.json()
    assert [im["label"] for im in ans["images"]] == [-1, -1, -1]
    assert _b64s(ans) == [_png(im) for im in samplers["dcgan"].generate([0, 1, 2], None, 1.0)]


def test_translate_raw_and_multipart(service, samplers):
    from ganaug.data.images import conform

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(RES, RES, CH), dtype=np.uint8)
    r = service.post("/v1/models/pix2pix/translate", headers={**AUTH, "Content-Type": "image/png"}, content=_png(x))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert r.content == _png(samplers["pix2pix"].translate(x[None])[0])

    # Multipart, RGB, another size: converted to the model's resolution and channels.
    big = rng.integers(0, 256, size=(40, 24, 3), dtype=np.uint8)
    r = service.post("/v1/models/pix2pix/translate", headers=AUTH,
                     files={"image": ("x.png", _png(big), "image/png")})
    assert r.status_code == 200, r.text
    expected = samplers["pix2pix"].translate(conform(big, RES, CH)[None])[0]
    assert r.content == _png(expected)


def test_client_roundtrip(service, samplers):
    from ganaug.client import GeneratorClient

    with GeneratorClient(str(service.base_url), token=TOKEN, retries=2) as c:
        assert c.health()
        assert {m["id"] for m in c.models()} == {"cgan", "dcgan", "pix2pix"}
        x = c.sample("cgan", 5, labels=[1, 2, 3, 4, 5], seed=7, truncation=0.5, batch=2)  # 3 requests
        assert x.dtype == np.uint8 and x.shape == (5, RES, RES, CH)
        np.testing.assert_array_equal(x, samplers["cgan"].generate(range(7, 12), [1, 2, 3, 4, 5], 0.5))
        src = np.zeros((2, RES, RES, CH), np.uint8)
        src[1] = 255
        y = c.translate("pix2pix", src)
        np.testing.assert_array_equal(y, samplers["pix2pix"].translate(src))


def test_concurrent_requests_are_batched(service, samplers):
    assert service.delete("/v1/_stats", headers=AUTH).status_code == 200

    def one(i: int):
        return service.post("/v1/models/cgan/samples", headers=AUTH,
                            json={"n": 2, "labels": [i % K, (i + 1) % K], "seed": 1000 + 10 * i, "truncation": 0.8})

    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(one, range(24)))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
    stats = service.get("/v1/_stats", headers=AUTH).json()
    sizes = [b["requests"] for b in stats["batches"] if b["kind"] == "sample"]
    assert sum(sizes) == 24
    assert max(sizes) > 1, f"no request was batched: {sizes}"
    # Whatever batch a request rode in, its images are those of a lone generate() call.
    for i, a in enumerate(answers):
        expected = samplers["cgan"].generate([1000 + 10 * i, 1001 + 10 * i], [i % K, (i + 1) % K], 0.8)
        assert _b64s(a.json()) == [_png(im) for im in expected]
    # Each model was loaded once, lazily, and stayed (3 models, LRU bound 3).
    assert all(v == 1 for v in stats["loads"].values()), stats["loads"]


# -------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                                     {"Authorization": TOKEN}, {"Authorization": f"Bearer {TOKEN}x"}])
def test_missing_or_wrong_token_is_401(service, headers):
    for method, path, kw in [("GET", "/v1/models", {}),
                             ("POST", "/v1/models/cgan/samples", {"json": {"n": 1, "label": 1}}),
                             ("POST", "/v1/models/pix2pix/translate", {"content": b"x"}),
                             ("GET", "/v1/_stats", {})]:
        r = service.request(method, path, headers=headers, **kw)
        assert r.status_code == 401, (path, r.status_code, r.text)
        assert TOKEN not in r.text and r.headers.get("www-authenticate") == "Bearer"


def test_unknown_model_is_404(service):
    r = service.post("/v1/models/nope/samples", headers=AUTH, json={"n": 1})
    assert r.status_code == 404 and "nope" in r.json()["detail"]
    r = service.post("/v1/models/nope/translate", headers=AUTH, content=b"x")
    assert r.status_code == 404


@pytest.mark.parametrize("model,body,field,limit", [
    ("cgan", {"n": 0, "label": 1}, "n", 32),
    ("cgan", {"n": 33, "label": 1}, "n", 32),
    ("cgan", {"n": "3", "label": 1}, "n", 32),
    ("cgan", {"n": True, "label": 1}, "n", 32),
    ("cgan", {"labels": list(range(10)) * 4}, "labels", 32),
    ("cgan", {"n": 2, "labels": [1, 10]}, "labels", [0, 9]),
    ("cgan", {"n": 1, "label": -1}, "label", [0, 9]),
    ("cgan", {"n": 3, "labels": [1, 2]}, "labels", None),
    ("cgan", {"n": 1, "label": 1, "labels": [1]}, "labels", None),
    ("dcgan", {"n": 1, "label": 3}, "labels", None),
    ("cgan", {"n": 1, "label": 1, "truncation": -0.1}, "truncation", [0.0, 2.0]),
    ("cgan", {"n": 1, "label": 1, "truncation": 2.5}, "truncation", [0.0, 2.0]),
    ("cgan", {"n": 1, "label": 1, "truncation": "0.5"}, "truncation", [0.0, 2.0]),
    ("cgan", {"n": 1, "label": 1, "seed": -1}, "seed", None),
    ("cgan", {"n": 2, "label": 1, "seed": 2**63 - 1}, "seed", None),
    ("cgan", {"n": 1, "label": 1, "format": "jpeg"}, "format", ["png"]),
    ("cgan", {"n": 1, "label": 1, "nn": 3}, "nn", None),
    ("cgan", [1, 2], "body", None),
    ("cgan", {"n": 1, "label": 1, "seed": 1.5}, "seed", None),
    ("cgan", {"n": None, "labels": [1, "x"]}, "labels", None),
    ("pix2pix", {"n": 1}, "model", None),
])
def test_bad_fields_are_422_naming_field_and_limit(service, model, body, field, limit):
    r = service.post(f"/v1/models/{model}/samples", headers=AUTH, json=body)
    assert r.status_code == 422, r.text
    ans = r.json()
    assert ans["field"] == field, ans
    assert field in ans["detail"] or field in ("body", "model")
    if limit is not None:
        assert ans["limit"] == limit, ans


@pytest.mark.parametrize("raw", [b"{not json", b'{"n": NaN, "label": 1}', b'{"n": 1, "label": 1, "truncation": Infinity}',
                                 b"\xff\xfe", b'{"n": 1,'])
def test_malformed_json_is_422(service, raw):
    r = service.post("/v1/models/cgan/samples", headers={**AUTH, "Content-Type": "application/json"}, content=raw)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "body"


def test_body_over_limit_is_422_naming_the_limit(service):
    body = json.dumps({"n": 1, "label": 1, "labels_pad": "x" * 3000}).encode()
    r = service.post("/v1/models/cgan/samples", headers={**AUTH, "Content-Type": "application/json"}, content=body)
    assert r.status_code == 422 and r.json()["field"] == "body" and r.json()["limit"] == 2048
    assert "max_body_bytes" in r.json()["detail"]

    # Chunked (no Content-Length): refused while streaming, same answer.
    def chunks():
        for _ in range(10):
            yield b" " * 300
        yield b'{"n": 1, "label": 1}'

    r = service.post("/v1/models/cgan/samples", headers={**AUTH, "Content-Type": "application/json"}, content=chunks())
    assert r.status_code == 422 and r.json()["limit"] == 2048


def test_bad_uploads_are_422(service):
    hdr = {**AUTH, "Content-Type": "image/png"}
    # not an image
    r = service.post("/v1/models/pix2pix/translate", headers=hdr, content=b"hello, I am text")
    assert r.status_code == 422 and r.json()["field"] == "image"
    # a pickle is just "not an image": nothing is ever unpickled
    import pickle

    r = service.post("/v1/models/pix2pix/translate", headers=hdr, content=pickle.dumps({"a": 1}))
    assert r.status_code == 422 and r.json()["field"] == "image"
    # .npy is not accepted as an upload either
    buf = io.BytesIO()
    np.save(buf, np.zeros((RES, RES), np.uint8))
    r = service.post("/v1/models/pix2pix/translate", headers=hdr, content=buf.getvalue())
    assert r.status_code == 422
    # empty
    r = service.post("/v1/models/pix2pix/translate", headers=hdr, content=b"")
    assert r.status_code == 422 and r.json()["field"] == "image"
    # over max_upload_bytes (random pixels do not compress)
    noise = np.random.default_rng(1).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    r = service.post("/v1/models/pix2pix/translate", headers=hdr, content=_png(noise))
    assert r.status_code == 422 and r.json()["limit"] == 8192 and "max_upload_bytes" in r.json()["detail"]
    # too many pixels (a tiny, highly compressible PNG that would decode big)
    r = service.post("/v1/models/pix2pix/translate", headers=hdr, content=_png(np.zeros((300, 300, 1), np.uint8)))
    assert r.status_code == 422 and "max_upload_pixels" in r.json()["detail"]
    # multipart without a file part
    r = service.post("/v1/models/pix2pix/translate", headers=AUTH, data={"x": "1"}, files={"other": ("", b"")})
    assert r.status_code == 422
    # a noise model does not translate
    r = service.post("/v1/models/cgan/translate", headers=hdr, content=_png(np.zeros((RES, RES, 1), np.uint8)))
    assert r.status_code == 422 and r.json()["field"] == "model"


def test_stats_hook_is_off_by_default():
    from serve.app import ServeArgs

    assert ServeArgs(models={"a": "/x"}).expose_stats is False


def test_healthy_after_the_errors(service, samplers):
    assert service.get("/healthz").status_code == 200
    r = service.post("/v1/models/cgan/samples", headers=AUTH, json={"n": 1, "label": 4, "seed": 5})
    assert r.status_code == 200
    assert _b64s(r.json()) == [_png(samplers["cgan"].generate([5], [4], 1.0)[0])]


# ----------------------------------------------------------------- overload, LRU, retries

@pytest.fixture(scope="module")
def tight(service, ckpts):
    """A second app with a one-deep queue, unbatched, one model per replica."""
    from ray import serve

    from serve.app import ServeArgs, app_builder

    args = ServeArgs(models={"a": ckpts["cgan"], "b": ckpts["dcgan"]}, token_env=TOKEN_ENV, expose_stats=True,
                     num_cpus=0.25, ingress_num_cpus=0.1, max_batch_size=1, max_ongoing_requests=1,
                     max_queued_requests=1, max_models_per_replica=1, **LIMITS)
    serve.run(app_builder(args), name="ganaug-tight", route_prefix="/tight")
    return "/tight"


def test_overload_is_a_fast_503(service, tight):
    def one(i: int):
        t = time.monotonic()
        r = service.post(f"{tight}/v1/models/a/samples", headers=AUTH, json={"n": 32, "label": 1, "seed": i})
        return r.status_code, time.monotonic() - t, r.headers.get("retry-after")

    for _attempt in range(3):  # a burst on 2 busy cores should overflow a 1+1 queue; retry if not
        with ThreadPoolExecutor(32) as pool:
            results = list(pool.map(one, range(32)))
        codes = [c for c, _, _ in results]
        if 503 in codes:
            break
    assert set(codes) <= {200, 503}, codes
    assert 503 in codes and 200 in codes, codes
    rejected = [dt for c, dt, _ in results if c == 503]
    assert min(rejected) < 5.0  # rejected at once, not after waiting in an unbounded queue
    assert all(ra == "1" for c, _, ra in results if c == 503)


def test_lru_bound_reloads_evicted_models(service, tight):
    for mid in ("a", "b", "a"):
        r = service.post(f"{tight}/v1/models/{mid}/samples", headers=AUTH,
                         json={"n": 1, "seed": 0, **({"label": 0} if mid == "a" else {})})
        assert r.status_code == 200, r.text
    stats = service.get(f"{tight}/v1/_stats", headers=AUTH).json()
    assert stats["loads"].get("b") == 1 and stats["loads"].get("a", 0) >= 2  # one model per replica: 'a' was evicted
    assert stats["live_generators"] == 1, "an evicted model's generator must be freed"


def test_client_retries_503_until_served(service, tight):
    from ganaug.client import GeneratorClient

    results, errors = [], []

    def worker(i: int):
        with GeneratorClient(f"{service.base_url}{tight}", token=TOKEN, retries=30, backoff=0.05,
                             max_backoff=0.5) as c:
            try:
                results.append((c.sample("a", 8, labels=1, seed=i).shape, c.retried))
            except Exception as e:  # noqa: BLE001
                errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert len(results) == 12 and all(s == (8, RES, RES, CH) for s, _ in results)
    assert sum(r for _, r in results) > 0  # 12 callers on a 1+1 queue: some were turned away, then served


def test_client_does_not_retry_client_errors(service):
    """Only 503 is retried: a 422 from the real service surfaces at once, naming the field."""
    from ganaug.client import APIError, GeneratorClient

    with GeneratorClient(str(service.base_url), token=TOKEN, retries=5, backoff=0.05) as c:
        with pytest.raises(APIError) as e:
            c.sample("cgan", 1, labels=[99], seed=0)
        assert e.value.status == 422 and c.retried == 0


# -------------------------------------------------------------------------- config & CLI

def test_config_yaml_is_a_valid_serve_config():
    from pathlib import Path

    import yaml

    from serve.app import ServeArgs, load_app_config

    path = Path(__file__).resolve().parents[1] / "serve" / "config.yaml"
    doc = yaml.safe_load(path.read_text())
    app = doc["applications"][0]
    assert app["import_path"] == "serve.app:app_builder" and doc["http_options"]["host"] == "127.0.0.1"
    entry, _http = load_app_config(str(path))
    assert ServeArgs.model_validate(entry["args"]).models == app["args"]["models"]
    try:  # the schema `serve run` / `serve deploy` validate against
        from ray.serve.schema import ServeDeploySchema
    except ImportError:
        return
    ServeDeploySchema.model_validate(doc) if hasattr(ServeDeploySchema, "model_validate") else ServeDeploySchema.parse_obj(doc)


def test_cli_serve_merges_models_and_flags(tmp_path, monkeypatch, ckpts):
    import serve.run as app_mod
    from ganaug.cli import main

    cfg = tmp_path / "serve.yaml"
    cfg.write_text("http_options: {host: 127.0.0.1, port: 9123}\n"
                   "applications:\n- name: g\n  route_prefix: /g\n  import_path: serve.app:app_builder\n"
                   f"  args: {{models: {{a: {ckpts['cgan']}, b: /nowhere}}, max_n: 16}}\n")
    seen = {}
    monkeypatch.setattr(app_mod, "run_foreground", lambda args, **kw: seen.update(args=args, **kw))
    main([ "serve", str(cfg), "--model", f"b={ckpts['dcgan']}", "--model", f"c={ckpts['pix2pix']}", "--port", "9000"])
    assert seen["args"].models == {"a": ckpts["cgan"], "b": ckpts["dcgan"], "c": ckpts["pix2pix"]}
    assert seen["args"].max_n == 16 and seen["port"] == 9000 and seen["host"] == "127.0.0.1"
    assert seen["name"] == "g" and seen["route_prefix"] == "/g"


@pytest.mark.parametrize("argv,needle", [
    (["serve", "--model", "nouri"], "--model"),
    (["serve"], "no models"),
    (["serve", "--model", "x=/does/not/exist"], "/does/not/exist"),
    (["serve", "/no/such/config.yaml"], "config.yaml"),
    (["serve", "--model", "bad id=/x"], "model id"),
])
def test_cli_serve_user_errors_exit_2(argv, needle, capsys):
    from ganaug.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
