"""Request and response models of the HTTP API (ARCHITECTURE.md §3), with the limits in the schema.

The sample request model is built per application (`sample_request_model`), because its
limits (max_n, the truncation range) come from the app's arguments; the OpenAPI document
then states the limits a client must respect.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, create_model

MAX_SEED = 2**63 - 1
SAMPLE_FIELDS = ("n", "labels", "label", "seed", "truncation", "format", "size")
# A served image is at most this many pixels a side (`ganaug generate --size` allows more):
# n images of 512 x 512 x 3 already make a large answer.
MAX_SERVED_SIDE = 512
SIZE_PATTERN = r"^(native|[1-9][0-9]{0,3}x[1-9][0-9]{0,3})$"

# The rule for a conditional model asked for images without a label; shown in the schema.
UNIFORM_RULE = ("A class-conditional model given neither 'label' nor 'labels' uses uniform labels: "
                "image j gets label j mod num_classes, exactly as `ganaug generate --labels uniform "
                "--seed S` labels its rows j = 0..n-1.")


def sample_request_model(max_n: int, min_truncation: float, max_truncation: float) -> type[BaseModel]:
    """The JSON body of POST /v1/models/{id}/samples under these limits."""
    label_item = Annotated[StrictInt, Field(ge=0)]
    return create_model(
        "SampleRequest",
        __config__=ConfigDict(extra="forbid", json_schema_extra={"description": UNIFORM_RULE}),
        n=(StrictInt | None, Field(None, ge=1, le=max_n,
                                   description=f"number of images, 1..{max_n} (max_n); default len(labels) or 1")),
        labels=(list[label_item] | None, Field(None, min_length=1, max_length=max_n,
                                               description="one label per image (conditional models)")),
        label=(StrictInt | None, Field(None, ge=0, description="one label for every image (conditional models)")),
        seed=(StrictInt, Field(0, ge=0, le=MAX_SEED, description="image j uses seed + j (seed + n - 1 <= 2**63 - 1)")),
        truncation=(StrictFloat | StrictInt, Field(1.0, ge=min_truncation, le=max_truncation, allow_inf_nan=False,
                                                   description=f"latent truncation in [{min_truncation}, {max_truncation}]")),
        format=(Literal["png"], Field("png", description="image encoding")),
        size=(str | None, Field(None, pattern=SIZE_PATTERN, max_length=9,
                                description=f"resize every image to HxW (antialiased, the bytes of `ganaug generate "
                                            f"--size HxW`; each side 1..{MAX_SERVED_SIDE}), or 'native': the "
                                            "training data's size (the model's native_size); default: the "
                                            "model's resolution")),
    )


class ModelInfo(BaseModel):
    id: str
    family: str
    kind: Literal["noise", "translation"]
    resolution: int
    channels: int
    num_classes: int
    class_names: list[str]
    conditional: bool
    step: int | None = None
    native_size: list[int] | None = Field(None, description="[H, W] of the training data ('size': 'native')")


class ModelList(BaseModel):
    models: list[ModelInfo]


class SampledImage(BaseModel):
    seed: int
    label: int = Field(description="-1 for an unconditional model")
    class_name: str
    data: str = Field(description="base64 of the PNG bytes")


class SampleResponse(BaseModel):
    model: str
    generator: str = Field(description="checkpoint id of the weights that made the images")
    truncation: float
    format: Literal["png"]
    size: list[int] = Field(description="[H, W] of every image")
    images: list[SampledImage]


class Health(BaseModel):
    status: Literal["ok"]


Limit = StrictInt | StrictFloat | list[StrictInt | StrictFloat | str]


class ErrorBody(BaseModel):
    """Every error answer: what went wrong and, for a 422, the field and its limit."""

    detail: str
    field: str | None = None
    limit: Limit | None = None


class StatsBody(BaseModel):
    loads: dict[str, int]
    live_generators: int
    batches: list[dict[str, Any]]


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route: its declared error bodies."""
    text = {401: "missing or invalid bearer token", 404: "unknown model",
            422: "a field is invalid: the answer names it and its limit",
            503: "overloaded or generators unavailable; retry after Retry-After seconds",
            500: "internal error (generic; the detail is only logged)"}
    return {c: {"model": ErrorBody, "description": text[c]} for c in codes}
