"""The HTTP service: real Ray Serve over real HTTP on 127.0.0.1, with tiny untrained models.

One app ("ganaug-test") serves a cgan, a dcgan and a pix2pix for the whole module; a second,
deliberately tight app ("ganaug-tight") checks overload (503) and the LRU bound. Both are
deleted and Serve shut down at the end, so other modules sharing the Ray session are unaffected.
"""

from __future__ import annotations

import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

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


def test_size_per_request_equals_generate_size(service, samplers):
    """'size' resizes each image as `ganaug generate --size` does: the same antialiased resize
    of the same rows, so the same bytes; 'native' is the model's recorded native_size."""
    from PIL import Image

    from ganaug import shards
    from ganaug.generation import generate_rows
    from ganaug.sampling import resize_images
    from serve_fixtures import NATIVE

    labels = [1, 2, 3]
    rows, _, _ = generate_rows(samplers["cgan"], np.arange(3), np.asarray(labels), 7, 1.0, 3)
    encode = shards.get_encoder("png").encode_one
    for size, hw in (("24x20", (24, 20)), ("native", NATIVE)):
        r = service.post("/v1/models/cgan/samples", headers=AUTH, json={"n": 3, "labels": labels, "seed": 7, "size": size})
        assert r.status_code == 200, r.text
        assert r.json()["size"] == list(hw)
        assert _b64s(r.json()) == [encode(im) for im in resize_images(rows, hw)]
        with Image.open(io.BytesIO(_b64s(r.json())[0])) as im:
            assert im.size == (hw[1], hw[0])  # PIL: (width, height)
    # Without 'size' the model's own resolution, and the answer says so.
    assert service.post("/v1/models/cgan/samples", headers=AUTH, json={"n": 1}).json()["size"] == [RES, RES]
    for body, needle in (({"size": "native"}, "does not record"), ({"size": "600x600"}, "1..512"),
                         ({"size": "big"}, "size")):
        r = service.post("/v1/models/dcgan/samples", headers=AUTH, json={"n": 1, **body})
        assert r.status_code == 422 and r.json()["field"] == "size" and needle in r.json()["detail"], r.text


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


# ------------------------------------------------------------- additions of the typed API

def test_conditional_model_without_label_gets_uniform_labels(service, samplers):
    """No label -> label j mod K, exactly the rows of `ganaug generate --labels uniform --seed 5`."""
    from ganaug import shards
    from ganaug.generation import generate_rows
    from ganaug.labels import PlanContext, parse_plan

    r = service.post("/v1/models/cgan/samples", headers=AUTH, json={"n": 12, "seed": 5, "truncation": 0.9})
    assert r.status_code == 200, r.text
    plan = parse_plan("uniform", PlanContext(num=12, num_classes=K)).labels()
    assert [im["label"] for im in r.json()["images"]] == [j % K for j in range(12)] == plan.tolist()
    rows, _, _ = generate_rows(samplers["cgan"], np.arange(12), plan, 5, 0.9, 12)
    assert _b64s(r.json()) == [shards.get_encoder("png").encode_one(im) for im in rows]


def test_openapi_and_docs_follow_the_auth_rules(service):
    for path in ("/openapi.json", "/docs"):
        assert service.get(path).status_code == 401
        assert service.get(path, headers={"Authorization": "Bearer nope"}).status_code == 401
    doc = service.get("/openapi.json", headers=AUTH).json()
    samples = doc["paths"]["/v1/models/{model_id}/samples"]["post"]
    assert {"401", "404", "422", "503"} <= set(samples["responses"])
    req = doc["components"]["schemas"]["SampleRequest"]["properties"]
    assert {"type": "integer", "maximum": 32, "minimum": 1} in req["n"]["anyOf"]  # max_n is in the schema
    assert "bearer" in json.dumps(doc["components"]["securitySchemes"]).lower()
    translate = doc["paths"]["/v1/models/{model_id}/translate"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "image/png"} <= set(translate)
    page = service.get("/docs", headers=AUTH)
    assert page.status_code == 200 and "swagger" in page.text.lower()


@pytest.mark.parametrize("content,ctype,field", [
    (b"[" * 2000, "application/json", "body"),                 # within max_body_bytes, too deep for json
    (b"[" * 16384, "application/json", "body"),                # 16 KiB of nesting: over the limit
    (b'{"a":' * 600 + b"1" + b"}" * 600, "application/json", "body"),
    (b"\x80\x81\xfe\xff" * 8, "application/json", "body"),     # not UTF-8 (nor 16/32)
    (b'{"n": 1, "label": 1}', "text/plain", "body"),            # wrong content type
    (b'{"n": 1, "label": 1}', "application/x-www-form-urlencoded", "body"),
    (b"n=1&label=1", "multipart/form-data; boundary=x", "body"),
    (b'"\\ud800"', "application/json", "body"),                 # a lone surrogate, a string
    (b"1e999999", "application/json", "body"),
])
def test_hostile_sample_bodies_are_422(service, content, ctype, field):
    r = service.post("/v1/models/cgan/samples", headers={**AUTH, "Content-Type": ctype}, content=content)
    assert r.status_code == 422, (r.status_code, r.text)
    assert r.json()["field"] == field


def test_hostile_uploads_and_paths_are_4xx(service):
    hdr = {**AUTH, "Content-Type": "image/png"}
    for body in (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, b"[" * 5000, "é".encode("latin-1") * 100):
        r = service.post("/v1/models/pix2pix/translate", headers=hdr, content=body)
        assert r.status_code == 422 and r.json()["field"] == "image", r.text
    big = b"x" * 40_000  # an oversize multipart upload: refused before it is parsed
    r = service.post("/v1/models/pix2pix/translate", headers=AUTH, files={"image": ("x.png", big, "image/png")})
    assert r.status_code == 422 and r.json()["limit"] == LIMITS["max_upload_bytes"]
    for path in ("/v1/models/%FF%FE/samples", "/v1/models/" + "a" * 3000 + "/samples"):
        r = service.post(path, headers=AUTH, json={"n": 1})
        assert r.status_code == 404, r.text
    r = service.post("/v1/models/cgan/samples", headers={**AUTH, "X-Junk": b"\xff\xfe"}, json={"n": 1})
    assert r.status_code == 200
    r = service.post("/v1/models/cgan/samples", headers={"Authorization": b"Bearer \xff\xfe"}, json={"n": 1})
    assert r.status_code == 401


def test_gallery_page_and_assets_are_served(service):
    page = service.get("/gallery")
    assert page.status_code == 200 and "ganaug gallery" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert service.get("/").text == page.text
    assert service.get("/gallery/static/gallery.js").status_code == 200
    assert service.get("/gallery/static/../api.py").status_code == 404


def test_probe_fails_for_a_model_that_cannot_sample(ckpts):
    import torch

    from ganaug.sampling import Sampler
    from serve.pool import probe

    good = Sampler.from_checkpoint(ckpts["cgan"], device="cpu")
    probe(good)
    probe(Sampler.from_checkpoint(ckpts["pix2pix"], device="cpu"))
    broken = Sampler.from_checkpoint(ckpts["cgan"], device="cpu")
    broken.G.z_dim = broken.G.z_dim + 1  # latents of the wrong width: the forward raises
    with pytest.raises((RuntimeError, ValueError, torch.nn.modules.module.ModuleAttributeError)
                       if hasattr(torch.nn.modules.module, "ModuleAttributeError") else (RuntimeError, ValueError)):
        probe(broken)


def test_typed_deployment_options(ckpts):
    from serve.app import ServeArgs, app_builder

    args = ServeArgs(models={"a": ckpts["cgan"]}, autoscaling={"min_replicas": 1, "max_replicas": 3},
                     max_batch_size=24, use_gpu=True)
    pool = app_builder(args)._bound_deployment.init_args[0]  # GanaugAPI.bind(pool, ...)
    dep = pool._bound_deployment
    cfg = dep._deployment_config
    assert cfg.autoscaling_config.target_ongoing_requests == 24 and cfg.autoscaling_config.max_replicas == 3
    assert dep.ray_actor_options["num_gpus"] == 1
    assert ServeArgs(models={"a": "/x"}).gpus_per_replica == 0
    with pytest.raises(Exception, match="min_replicas"):
        ServeArgs(models={"a": "/x"}, autoscaling={"min_replicas": 5, "max_replicas": 2})
    with pytest.raises(Exception, match="autoscaling_config"):
        ServeArgs(models={"a": "/x"}, autoscaling_config={"min_replicas": 1})  # the untyped dict is gone


def test_no_token_in_bound_args_or_deployed_config(ckpts):
    from serve.app import ServeArgs, app_builder

    app = app_builder(ServeArgs(models={"a": ckpts["cgan"]}, token_env=TOKEN_ENV))
    bound = app._bound_deployment
    assert TOKEN not in repr(bound.init_args) + repr(bound.init_kwargs)


@pytest.mark.parametrize("host,env,flag,ok", [
    ("127.0.0.1", False, False, True), ("localhost", False, False, True), ("::1", False, False, True),
    ("0.0.0.0", False, False, False), ("10.1.2.3", False, False, False), ("myhost", False, False, False),
    ("0.0.0.0", True, False, True), ("0.0.0.0", False, True, True),
])
def test_exposure_needs_a_token_or_the_flag(monkeypatch, host, env, flag, ok):
    from serve.args import ServeArgs, ServeConfigError, check_exposure

    monkeypatch.delenv("GANAUG_API_TOKEN", raising=False)
    if env:
        monkeypatch.setenv("GANAUG_API_TOKEN", "t")
    args = ServeArgs(models={"a": "/x"})
    if ok:
        check_exposure(args, host, flag)
    else:
        with pytest.raises(ServeConfigError, match="--allow-unauthenticated"):
            check_exposure(args, host, flag)


def test_cli_serve_refuses_open_exposure(ckpts, capsys, monkeypatch):
    import serve.run as run_mod
    from ganaug.cli import main

    monkeypatch.delenv("GANAUG_API_TOKEN", raising=False)
    with pytest.raises(SystemExit) as e:
        main(["serve", "--model", f"a={ckpts['cgan']}", "--host", "0.0.0.0"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and "--allow-unauthenticated" in err
    seen = {}
    monkeypatch.setattr(run_mod, "run_foreground", lambda args, **kw: seen.update(args=args, **kw))
    main(["serve", "--model", f"a={ckpts['cgan']}", "--host", "0.0.0.0", "--allow-unauthenticated", "--use-gpu"])
    assert seen["allow_unauthenticated"] and seen["args"].gpus_per_replica == 1 and seen["request_timeout_s"] > 0


# --------------------------------------------- multiplexing, internal errors, dead replicas

@pytest.fixture(scope="module")
def multi(service, ckpts, tmp_path_factory):
    """A third app: a small and a slow-to-load model, and one whose weights vanish after the build."""
    import shutil

    from ray import serve

    from serve.app import ServeArgs, app_builder

    root = tmp_path_factory.mktemp("multi")
    big = make_checkpoint(str(root / "big"), "cgan", seed=3, width=256)
    broken = shutil.copytree(ckpts["cgan"], str(root / "broken"))
    args = ServeArgs(models={"a": ckpts["cgan"], "big": big, "broken": broken}, token_env=TOKEN_ENV,
                     expose_stats=True, num_cpus=0.25, ingress_num_cpus=0.1, max_models_per_replica=2, **LIMITS)
    serve.run(app_builder(args), name="ganaug-multi", route_prefix="/multi")
    for f in (root / "broken").rglob("*.safetensors"):
        f.unlink()
    return "/multi"


def test_cold_load_does_not_block_loaded_models(service, multi):
    url = f"{multi}/v1/models/{{}}/samples"
    assert service.post(url.format("a"), headers=AUTH, json={"n": 1, "label": 0}).status_code == 200
    done: dict[str, float] = {}

    def cold():
        r = service.post(url.format("big"), headers=AUTH, json={"n": 1, "label": 0})
        done["big"] = time.monotonic()
        assert r.status_code == 200, r.text

    t = threading.Thread(target=cold)
    t0 = time.monotonic()
    t.start()
    time.sleep(0.05)
    warm = []
    while t.is_alive() and len(warm) < 20:
        r = service.post(url.format("a"), headers=AUTH, json={"n": 1, "label": 1})
        assert r.status_code == 200
        warm.append(time.monotonic())
    t.join(60)
    assert warm and warm[0] < done["big"], "a request for a loaded model waited for another model's load"
    assert done["big"] - t0 > 0  # sanity
    stats = service.get(f"{multi}/v1/_stats", headers=AUTH).json()
    assert stats["live_generators"] <= 2


def test_internal_error_is_a_generic_500(service, multi):
    r = service.post(f"{multi}/v1/models/broken/samples", headers=AUTH, json={"n": 1, "label": 0})
    assert r.status_code == 500
    assert r.json() == {"detail": "internal error; the server log has the details"}
    assert "safetensors" not in r.text and "broken" not in r.text


def test_a_dead_replica_answers_503_not_500(service, multi):
    import ray

    url = f"{multi}/v1/models/a/samples"
    pool = [a for a in ray.util.list_named_actors(all_namespaces=True)
            if "ganaug-multi" in a["name"] and "GeneratorPool" in a["name"]]
    assert pool, ray.util.list_named_actors(all_namespaces=True)
    ray.kill(ray.get_actor(pool[0]["name"], namespace=pool[0]["namespace"]), no_restart=True)
    codes = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        codes.append(service.post(url, headers=AUTH, json={"n": 1, "label": 0}).status_code)
        if codes[-1] == 200 and len(codes) > 1:
            break
        time.sleep(0.1)
    assert set(codes) <= {200, 503}, codes
    assert codes[-1] == 200, codes  # Serve replaced the replica


def test_token_never_reaches_logs_or_the_deployed_config(service, multi):
    """After all of the above: the token is in no file of the Ray session and no Serve status."""
    import ray
    from pathlib import Path

    from ray import serve
    from ray.serve.context import _get_global_client

    assert TOKEN not in repr(serve.status())
    assert TOKEN not in json.dumps(_get_global_client().get_serve_details(), default=str)
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    needle = TOKEN.encode()
    scanned = 0
    for path in session.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.stat().st_size < 200 << 20:
            try:
                data = path.read_bytes()
            except OSError:
                continue
            scanned += 1
            assert needle not in data, f"the token is in {path}"
    assert scanned > 10
