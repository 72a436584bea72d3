"""A small Python client of the ganaug HTTP API (serve/api.py; schema at GET /openapi.json).

    from ganaug.client import GeneratorClient
    with GeneratorClient("http://127.0.0.1:8000", token=...) as c:
        c.models()
        x = c.sample("digits", 16, labels=[3] * 16, seed=42, truncation=0.7)   # uint8 N x H x W x C
        y = c.translate("edges2digits", images)                               # uint8 N x H x W x C

503 (the service's bounded queue is full) and connection failures are retried with exponential
backoff and jitter, honouring Retry-After; other errors raise `APIError` with the server's
message. Sampling is deterministic in (model, seed, label, truncation), so retrying a POST is
safe.
"""

from __future__ import annotations

import base64
import io
import os
import random
import time
from collections.abc import Sequence
from typing import Any

import httpx
import numpy as np

from ganaug.imagecodec import encode_png

RETRY_STATUS = (503,)


class APIError(RuntimeError):
    """A non-retryable (or retried-out) error answer; `.status` and `.detail` from the server."""

    def __init__(self, status: int, detail: str, body: Any = None):
        super().__init__(f"HTTP {status}: {detail}")
        self.status, self.detail, self.body = status, detail, body


def _png_to_array(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        a = np.asarray(im)
    return a[:, :, None] if a.ndim == 2 else a


class GeneratorClient:
    def __init__(self, url: str = "http://127.0.0.1:8000", token: str | None = None, timeout: float = 60.0,
                 retries: int = 5, backoff: float = 0.1, max_backoff: float = 5.0,
                 transport: httpx.BaseTransport | None = None):
        """`token` defaults to $GANAUG_API_TOKEN; `retries` counts extra attempts after the first."""
        if token is None:
            token = os.environ.get("GANAUG_API_TOKEN") or None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.retries, self.backoff, self.max_backoff = int(retries), float(backoff), float(max_backoff)
        self.retried = 0  # total retries so far (observability; tests)
        self._http = httpx.Client(base_url=url.rstrip("/"), timeout=timeout, headers=headers,
                                  transport=transport)

    # -- plumbing --

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> GeneratorClient:  # noqa: PYI034
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        delay = min(self.max_backoff, self.backoff * (2 ** attempt))
        delay *= 0.5 + random.random() / 2  # jitter: callers that failed together retry apart
        if response is not None:
            ra = response.headers.get("retry-after", "")
            if ra.replace(".", "", 1).isdigit():
                delay = max(delay, min(float(ra), self.max_backoff))
        return delay

    def _request(self, method: str, path: str, **kw) -> httpx.Response:
        attempt = 0
        while True:
            response = None
            try:
                response = self._http.request(method, path, **kw)
            except (httpx.ConnectError, httpx.RemoteProtocolError):
                if attempt >= self.retries:
                    raise
            else:
                if response.status_code not in RETRY_STATUS or attempt >= self.retries:
                    break
            time.sleep(self._delay(attempt, response))
            attempt += 1
            self.retried += 1
        if response.is_error:
            try:
                body = response.json()
                detail = body.get("detail", response.text) if isinstance(body, dict) else response.text
            except ValueError:
                body, detail = None, response.text
            raise APIError(response.status_code, str(detail), body)
        return response

    # -- API --

    def health(self) -> bool:
        try:
            return self._http.get("/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    def models(self) -> list[dict]:
        """[{id, family, kind, resolution, channels, num_classes, class_names, conditional}, ...]"""
        return self._request("GET", "/v1/models").json()["models"]

    def sample_response(self, model: str, n: int, labels: Sequence[int] | int | None = None, seed: int = 0,
                        truncation: float = 1.0) -> dict:
        """The raw JSON answer of one /samples request."""
        body: dict[str, Any] = {"n": int(n), "seed": int(seed), "truncation": float(truncation), "format": "png"}
        if labels is not None:
            if isinstance(labels, (int, np.integer)):
                body["label"] = int(labels)
            else:
                body["labels"] = [int(v) for v in labels]
        return self._request("POST", f"/v1/models/{model}/samples", json=body).json()

    def sample(self, model: str, n: int, labels: Sequence[int] | int | None = None, seed: int = 0,
               truncation: float = 1.0, batch: int = 64) -> np.ndarray:
        """uint8 N x H x W x C; image j from seed + j (and labels[j]). Sent `batch` images per request."""
        if n < 1:
            raise ValueError("n must be >= 1")
        if labels is not None and not isinstance(labels, (int, np.integer)):
            labels = [int(v) for v in labels]
            if len(labels) != n:
                raise ValueError(f"got {len(labels)} labels for n={n}")
        parts = []
        for start in range(0, n, batch):
            k = min(batch, n - start)
            labs = labels[start:start + k] if isinstance(labels, list) else labels
            ans = self.sample_response(model, k, labs, seed + start, truncation)
            parts.extend(_png_to_array(base64.b64decode(im["data"])) for im in ans["images"])
        return np.stack(parts)

    def translate(self, model: str, images: np.ndarray) -> np.ndarray:
        """uint8 H x W x C or N x H x W x C (any size; the server resizes) -> uint8 N x R x R x C."""
        arr = np.asarray(images)
        if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (1, 3, 4)):
            arr = arr[None]  # one image (H x W, or H x W x C)
        elif arr.ndim != 4 and arr.ndim != 3:
            raise ValueError(f"expected H x W x C or N x H x W x C images, got shape {arr.shape}")
        out = []
        for im in arr:
            r = self._request("POST", f"/v1/models/{model}/translate", content=encode_png(im),
                              headers={"Content-Type": "image/png"})
            out.append(_png_to_array(r.content))
        return np.stack(out)
