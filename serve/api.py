"""`GanaugAPI`, the FastAPI ingress: auth, the model map, request validation, routing to the pool.

The FastAPI app is built on each ingress replica (`__serve_build_asgi_app__`), after the
constructor, because its request schema carries this app's limits and its auth carries the
token read from the replica's own environment.

What a client sends never produces a 5xx other than 503: `RequestGuard` bounds and checks a
body before FastAPI parses it (size, JSON that json.loads would choke on: deep nesting,
NaN, bytes that are not text), and anything unexpected answers a generic 500 whose detail
is only logged.
"""

import hmac
import json
import logging
import os
from typing import Any

from fastapi import Body, Depends, FastAPI, File, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ganaug import __version__
from ganaug.labels import PlanContext, parse_plan
from serve import schemas
from serve.gallery import add_gallery
from serve.schemas import MAX_SEED, SAMPLE_FIELDS, ErrorBody, error_responses
from serve.uploads import decode_upload

logger = logging.getLogger("ray.serve")
UNAVAILABLE = (DeploymentUnavailableError, ActorDiedError, ActorUnavailableError, RayActorError)
MULTIPART_OVERHEAD = 16_384  # part headers and boundaries around an upload of max_upload_bytes


class Secret:
    """A token that never shows itself in a repr, a log line or an error message."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value.encode("utf-8")

    def matches(self, candidate: str) -> bool:
        return hmac.compare_digest(self._value, candidate.encode("utf-8", "surrogateescape"))

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __reduce__(self):
        return (Secret, (self._value.decode("utf-8"),))


def bearer_ok(token: Secret | None, header: str) -> bool:
    """`Authorization` header value -> allowed? compare_digest runs for any header (timing)."""
    if token is None:
        return True
    scheme, _, value = header.partition(" ")
    return token.matches(value.strip()) and scheme.lower() == "bearer"


def error(status: int, detail: str, field: str | None = None, limit: Any = None,
          headers: dict | None = None) -> JSONResponse:
    body = ErrorBody(detail=detail, field=field, limit=limit).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=status, headers=headers)


class ClientError(Exception):
    """A 4xx/503 answer raised from a handler; rendered as an ErrorBody."""

    def __init__(self, status: int, detail: str, field: str | None = None, limit: Any = None,
                 headers: dict | None = None):
        super().__init__(detail)
        self.args_ = (status, detail, field, limit, headers)


def bad(field: str, detail: str, limit: Any = None) -> ClientError:
    return ClientError(422, detail, field, limit)


UNAUTHORIZED = ("missing or invalid bearer token", {"WWW-Authenticate": "Bearer"})


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


class RequestGuard:
    """Pure ASGI: bounds POST bodies, pre-checks JSON, and turns escaped exceptions into a 500."""

    def __init__(self, app, ingress: "GanaugAPI"):
        self.app, self.ingress = app, ingress

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            if scope["method"] == "POST" and scope["path"].rstrip("/").endswith(("/samples", "/translate")):
                answer, receive = await self._guard(scope, receive)
                if answer is not None:
                    return await answer(scope, receive, tracking_send)
            await self.app(scope, receive, tracking_send)
        except Exception:  # noqa: BLE001 - the client gets a generic answer, the log the detail
            logger.exception("internal error on %s %s", scope.get("method"), scope.get("path"))
            if not started:
                await error(500, "internal error; the server log has the details")(scope, receive, send)

    async def _guard(self, scope, receive):
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if not bearer_ok(self.ingress.token, headers.get("authorization", "")):
            return error(401, UNAUTHORIZED[0], headers=UNAUTHORIZED[1]), receive
        limits = self.ingress.limits
        samples = scope["path"].rstrip("/").endswith("/samples")
        if samples:
            limit, field, name = limits["max_body_bytes"], "body", "max_body_bytes"
        else:
            multipart = headers.get("content-type", "").lower().startswith("multipart/")
            limit = limits["max_upload_bytes"] + (MULTIPART_OVERHEAD if multipart else 0)
            field, name = "image", "max_upload_bytes"
        too_big = error(422, f"{field} larger than {limits[name]} bytes ({name})", field, limits[name])
        cl = headers.get("content-length", "")
        if cl.strip().isdigit() and int(cl) > limit:
            return too_big, receive
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None, receive
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return too_big, receive
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if samples and body.strip():
            try:
                json.loads(body, parse_constant=_reject_constant)
            except (ValueError, RecursionError, UnicodeDecodeError) as e:
                reason = "nested too deeply" if isinstance(e, RecursionError) else str(e).splitlines()[0][:200]
                return error(422, f"body: malformed JSON: {reason}", "body"), receive
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return None, replay


def _validation_answer(exc: RequestValidationError, request: Request, ingress: "GanaugAPI") -> JSONResponse:
    err = exc.errors()[0]
    loc = list(err.get("loc", ()))
    kind = err.get("type", "")
    if loc and loc[0] == "body" and len(loc) > 1 and isinstance(loc[1], str):
        field = loc[1]
    elif loc and loc[0] == "body":
        field = "body"
    else:
        field = str(loc[-1]) if loc else "body"
    if kind == "extra_forbidden":
        return error(422, f"unknown field {field!r}; allowed: {', '.join(SAMPLE_FIELDS)}", field)
    lim = ingress.limits
    info = ingress.catalog.get(str(request.path_params.get("model_id", "")), {})
    k = int(info.get("num_classes", 0) or 0)
    limits = {"n": lim["max_n"], "truncation": [lim["min_truncation"], lim["max_truncation"]],
              "format": ["png"], "seed": [0, MAX_SEED], "label": [0, k - 1] if k else None,
              "labels": lim["max_n"] if kind in ("too_long", "too_short") else ([0, k - 1] if k else None)}
    limit = limits.get(field)
    msg = err.get("msg", "invalid")
    if field == "body" and kind in ("model_attributes_type", "dict_type", "json_invalid"):
        msg = "the body must be a JSON object (Content-Type: application/json)"
    names = {"n": " (max_n)", "labels": " (max_n)" if kind in ("too_long", "too_short") else ""}
    detail = f"{field}: {msg}" + (f"; limit {limit}{names.get(field, '')}" if limit is not None else "")
    return error(422, detail, field, limit)


# The translate body as the schema shows it: a raw image (multipart is declared by the route's File).
RAW_IMAGE_BODY = {"requestBody": {"content": {
    "image/png": {"schema": {"type": "string", "format": "binary"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}


def build_api(ingress: "GanaugAPI") -> FastAPI:
    # 1. The app: no default docs pages (ours need the token), every error an ErrorBody.
    app = FastAPI(title="ganaug", version=__version__, description=schemas.UNIFORM_RULE,
                  docs_url=None, redoc_url=None, openapi_url=None)
    _add_error_handlers(app, ingress)
    app.add_middleware(RequestGuard, ingress=ingress)
    auth = [Depends(_auth_dependency(ingress))]
    # 2. The routes, in the schema's order: health, schema and docs, models, samples, translate.
    _add_meta_routes(app, auth)
    _add_model_routes(app, ingress, auth)
    if ingress.expose_stats:
        _add_stats_routes(app, ingress, auth)
    # 3. The gallery page and its static files.
    add_gallery(app, ingress.limits)
    return app


def _auth_dependency(ingress: "GanaugAPI"):
    bearer = HTTPBearer(auto_error=False, description="the service's API token ($GANAUG_API_TOKEN)")

    def require_auth(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        header = f"{creds.scheme} {creds.credentials}" if creds is not None else ""
        if not bearer_ok(ingress.token, header):
            raise HTTPException(401, UNAUTHORIZED[0], headers=UNAUTHORIZED[1])

    return require_auth


def _add_error_handlers(app: FastAPI, ingress: "GanaugAPI") -> None:
    @app.exception_handler(ClientError)
    async def _client_error(request: Request, exc: ClientError):
        return error(*exc.args_)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 400:  # FastAPI's "cannot parse the body" (e.g. broken multipart): a bad field
            field = "image" if request.url.path.rstrip("/").endswith("/translate") else "body"
            return error(422, f"{field}: {exc.detail}", field)
        return error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return _validation_answer(exc, request, ingress)


def _add_meta_routes(app: FastAPI, auth: list) -> None:
    @app.get("/healthz", response_model=schemas.Health, tags=["ops"])
    async def healthz():
        return {"status": "ok"}

    @app.get("/openapi.json", include_in_schema=False, dependencies=auth)
    async def openapi(request: Request):
        doc = dict(app.openapi())
        root = request.scope.get("root_path", "").rstrip("/")
        if root:
            doc["servers"] = [{"url": root}]
        return JSONResponse(doc)

    @app.get("/docs", include_in_schema=False, dependencies=auth)
    async def docs(request: Request):
        # The schema is embedded: the browser's fetch of /openapi.json would lack the token.
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(openapi_url=f"{root}/openapi.json", title="ganaug API",
                                   swagger_ui_parameters={"spec": app.openapi(), "persistAuthorization": False})


def _add_model_routes(app: FastAPI, ingress: "GanaugAPI", auth: list) -> None:
    lim = ingress.limits
    # The request schema carries this app's limits, so it is built per app.
    SampleRequest = schemas.sample_request_model(lim["max_n"], lim["min_truncation"], lim["max_truncation"])

    @app.get("/v1/models", response_model=schemas.ModelList, dependencies=auth,
             responses=error_responses(401), tags=["models"])
    async def models():
        return {"models": [ingress.catalog[k] for k in sorted(ingress.catalog)]}

    @app.post("/v1/models/{model_id}/samples", response_model=schemas.SampleResponse, dependencies=auth,
              responses=error_responses(401, 404, 422, 503), tags=["models"],
              summary="Sample images: image j uses seed + j (equals row j of `ganaug generate --seed`)")
    async def samples(model_id: str, req: SampleRequest | None = Body(None)):  # type: ignore[valid-type]
        info = ingress.model(model_id)
        if info["kind"] != "noise":
            raise bad("model", f"model {model_id!r} translates images: POST /v1/models/{model_id}/translate")
        req = req or SampleRequest()
        seed, n, labels = resolve_labels(req, info, lim["max_n"])
        size = resolve_size(req.size, info)
        ans = await ingress.call(model_id, "sample", seed, n, labels, float(req.truncation), size)
        return sample_answer(model_id, info, req, seed, labels, ans, size)

    @app.post("/v1/models/{model_id}/translate", response_class=Response, dependencies=auth,
              responses={200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
                               "description": "the translated PNG"}, **error_responses(401, 404, 422, 503)},
              openapi_extra=RAW_IMAGE_BODY, tags=["models"],
              summary="Translate one image (multipart field 'image', or the raw image as the body)")
    async def translate(model_id: str, request: Request, image: UploadFile | None = File(None)):
        info = ingress.model(model_id)
        if info["kind"] != "translation":
            raise bad("model", f"model {model_id!r} generates from noise: POST /v1/models/{model_id}/samples")
        x = decode_upload(await upload_bytes(request, image, lim), info, lim)
        ans = await ingress.call(model_id, "translate", x)
        return Response(content=ans["png"], media_type="image/png",
                        headers={"X-Ganaug-Model": model_id, "X-Ganaug-Generator": ans["generator"]})


def _add_stats_routes(app: FastAPI, ingress: "GanaugAPI", auth: list) -> None:
    @app.get("/v1/_stats", response_model=schemas.StatsBody, dependencies=auth, include_in_schema=False)
    async def stats():
        return await ingress.pool.stats.remote()

    @app.delete("/v1/_stats", dependencies=auth, include_in_schema=False)
    async def reset_stats():
        await ingress.pool.reset_stats.remote()
        return {"reset": True}


def resolve_size(text: str | None, info: dict) -> tuple[int, int] | None:
    """The request's 'size' -> (H, W), or None for the model's own resolution; 422 naming 'size'."""
    if text is None:
        return None
    if text == "native":
        if not info.get("native_size"):
            raise bad("size", f"size native: model {info['id']!r} does not record its training data's size "
                              "(trained before ganaug recorded native_size); give the size as HxW")
        return int(info["native_size"][0]), int(info["native_size"][1])
    h, w = (int(v) for v in text.split("x"))
    if not (h <= schemas.MAX_SERVED_SIDE and w <= schemas.MAX_SERVED_SIDE):
        raise bad("size", f"size {text}: each side must be in 1..{schemas.MAX_SERVED_SIDE}", schemas.MAX_SERVED_SIDE)
    return h, w


def sample_answer(model_id: str, info: dict, req, seed: int, labels: list[int] | None, ans: dict,
                  size: tuple[int, int] | None = None) -> dict:
    """The pool's images -> the SampleResponse body: image j has seed + j and its label's class name."""
    names = info["class_names"]
    images = []
    for j, data in enumerate(ans["images"]):
        label = labels[j] if labels is not None else -1
        images.append({"seed": seed + j, "label": label, "data": data,
                       "class_name": names[label] if 0 <= label < len(names) else ""})
    side = [info["resolution"], info["resolution"]] if size is None else list(size)
    return {"model": model_id, "generator": ans["generator"], "truncation": float(req.truncation),
            "format": "png", "size": side, "images": images}


async def upload_bytes(request: Request, image: UploadFile | None, lim: dict) -> bytes:
    """The uploaded image: the multipart field 'image', or the raw body; 422 past max_upload_bytes."""
    if image is not None:
        data = await image.read(lim["max_upload_bytes"] + 1)
    elif request.headers.get("content-type", "").lower().startswith("multipart/"):
        raise bad("image", "multipart body has no file part named 'image'")
    else:
        data = await request.body()
    if len(data) > lim["max_upload_bytes"]:
        raise bad("image", f"image larger than {lim['max_upload_bytes']} bytes (max_upload_bytes)",
                  lim["max_upload_bytes"])
    return data


def resolve_labels(req, info: dict, max_n: int) -> tuple[int, int, list[int] | None]:
    """A validated request -> (seed, n, labels or None) for this model; ClientError(422) if inconsistent."""
    if req.labels is not None and req.label is not None:
        raise bad("labels", "labels: give either 'labels' or 'label', not both")
    labels = list(req.labels) if req.labels is not None else None
    n = req.n if req.n is not None else (len(labels) if labels is not None else 1)
    if labels is not None and len(labels) != n:
        raise bad("labels", f"labels: got {len(labels)} labels for n={n}; give one label per image", max_n)
    field = "labels"
    if req.label is not None:
        labels, field = [req.label] * n, "label"
    k = info["num_classes"]
    if info["conditional"]:
        if labels is None:  # the documented uniform rule: the same plan as `generate --labels uniform`
            labels = parse_plan("uniform", PlanContext(num=n, num_classes=k)).labels().tolist()
        wrong = [v for v in labels if not 0 <= v < k]
        if wrong:
            raise bad(field, f"{field}: label {wrong[0]} out of range 0..{k - 1} ({k} classes)", [0, k - 1])
    elif labels is not None:
        raise bad("labels", f"labels: model {info['id']!r} is unconditional; omit label and labels")
    if req.seed + n - 1 > MAX_SEED:
        raise bad("seed", f"seed: seed + n - 1 must be <= 2**63 - 1 (seed <= {MAX_SEED - n + 1} for n={n})",
                  [0, MAX_SEED - n + 1])
    return req.seed, n, labels


@serve.deployment(name="GanaugAPI")
@serve.ingress()
class GanaugAPI:
    def __init__(self, pool, catalog: dict[str, dict], limits: dict, token_env: str = "GANAUG_API_TOKEN",
                 token: Secret | None = None, require_token: bool = False, expose_stats: bool = False):
        self.pool = pool
        self.catalog = catalog
        self.limits = limits
        self.expose_stats = expose_stats
        self._handles: dict[str, Any] = {}
        # Read here, in the replica: the value is in no bound argument and no controller checkpoint.
        env = os.environ.get(token_env, "") if token_env else ""
        self.token = token or (Secret(env) if env else None)
        if self.token is None:
            if require_token:
                raise RuntimeError(f"require_token is set but ${token_env} is empty in the ingress replica")
            logger.warning("ganaug API: no bearer token configured; every endpoint is open")

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_api(self)

    def model(self, model_id: str) -> dict:
        info = self.catalog.get(model_id)
        if info is None:
            raise ClientError(404, f"unknown model {model_id!r}; available: {', '.join(sorted(self.catalog))}",
                              "model")
        return info

    async def call(self, model_id: str, method: str, *args):
        h = self._handles.get(model_id)
        if h is None:
            h = self._handles[model_id] = self.pool.options(multiplexed_model_id=model_id)
        try:
            return await getattr(h, method).remote(*args)
        except BackPressureError:
            raise ClientError(503, "overloaded: the generator queue is full; retry later",
                              headers={"Retry-After": "1"}) from None
        except UNAVAILABLE as e:
            logger.warning("generator pool unavailable for %s: %s", model_id, type(e).__name__)
            raise ClientError(503, "generators unavailable; retry later", headers={"Retry-After": "1"}) from None
