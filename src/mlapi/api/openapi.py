"""The OpenAPI document: FastAPI's, plus one predict path per model and version with its exact request schema.

Models come and go at run time, so these paths are generated from the registry the process holds, and the
document is rebuilt after every registry change (`reset`).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from mlapi.api.dataplane import DataPlane
from mlapi.api.routes import SECURITY
from mlapi.models.spec import ModelSpec
from mlapi.schemas import Accepted, BatchAccepted, BatchOut, Error, ErrorWithIds, PredictionOut

_SCHEMAS: list[type[BaseModel]] = [PredictionOut, BatchOut, Accepted, BatchAccepted, Error, ErrorWithIds]


def _ref(model: type[BaseModel]) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(*models: type[BaseModel]) -> dict[str, Any]:
    schema = _ref(models[0]) if len(models) == 1 else {"oneOf": [_ref(m) for m in models]}
    return {"application/json": {"schema": schema}}


RESPONSES: dict[str, Any] = {
    "200": {"description": "The prediction, or the batch's in order", "content": _json(PredictionOut, BatchOut)},
    "202": {"description": "Queued (`wait=false`); see the Location header", "content": _json(Accepted, BatchAccepted)},
    "400": {"description": "Malformed JSON, or a malformed Idempotency-Key", "content": _json(Error)},
    "401": {"description": "No API key, or an unknown or revoked one (auth required)", "content": _json(Error)},
    "403": {"description": "The key may not use this model", "content": _json(Error)},
    "404": {"description": "Unknown model or version", "content": _json(Error)},
    "409": {
        "description": "The first request with this Idempotency-Key is still in flight (with its `ids`); see "
        "Retry-After",
        "content": _json(ErrorWithIds),
    },
    "413": {"description": "Body too large", "content": _json(Error)},
    "422": {
        "description": "Invalid sample (`loc` names the field), one the model fails on (with `ids`; the history "
        "keeps it), or an Idempotency-Key used before with other rows",
        "content": _json(Error, ErrorWithIds),
    },
    "429": {"description": "Over the key's rate limit; see Retry-After", "content": _json(Error)},
    "503": {"description": "Broker unavailable, or no live worker holds the version", "content": _json(ErrorWithIds)},
    "504": {"description": "No answer in time; the id resolves later in the history", "content": _json(ErrorWithIds)},
}
WAIT_PARAMETER = {
    "name": "wait", "in": "query", "required": False, "schema": {"type": "boolean", "default": True},
    "description": "false: answer 202 at once and let the client read the result later",
}  # fmt: skip
IDEMPOTENCY_PARAMETER = {
    "name": "Idempotency-Key", "in": "header", "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x21-\\x7e]+$"},
    "description": "A retry with the same key and rows gets the first request's ids and answer (per API key and "
    "path, remembered for MLAPI_API__IDEMPOTENCY_TTL_S)",
}  # fmt: skip


def request_body(spec: ModelSpec, max_instances: int) -> dict[str, Any]:
    """The model version's exact sample schema, alone or as a batch."""
    sample = spec.sample_type.model_json_schema()
    batch = {
        "title": f"{sample['title']}Batch",
        "type": "object",
        "properties": {"instances": {"type": "array", "items": sample, "minItems": 1, "maxItems": max_instances}},
        "required": ["instances"],
        "additionalProperties": False,
    }
    examples = {
        "sample": {"summary": "One sample", "value": spec.example},
        "batch": {"summary": "A batch", "value": {"instances": [spec.example, spec.example]}},
    }
    return {
        "required": True,
        "content": {"application/json": {"schema": {"oneOf": [sample, batch]}, "examples": examples}},
    }


def _operation(spec: ModelSpec, summary: str, operation_id: str, max_instances: int) -> dict[str, Any]:
    return {
        "post": {
            "tags": ["predict"],
            "summary": summary,
            "operationId": operation_id,
            "parameters": [WAIT_PARAMETER, IDEMPOTENCY_PARAMETER],
            "requestBody": request_body(spec, max_instances),
            "responses": RESPONSES,
            "security": SECURITY,
        }
    }


def _predict_paths(dp: DataPlane) -> dict[str, Any]:
    limit = dp.settings.api.max_instances
    paths: dict[str, Any] = {}
    default = dp.snapshot.get(dp.settings.api.default_model)
    if default is not None and default.default is not None:
        spec = default.default.spec
        summary = f"Predict with the default model, {spec.name} (version {spec.version})"
        paths["/predict"] = _operation(spec, summary, "predict_default", limit)
    for model in dp.snapshot.values():
        ident = model.name.replace("-", "_")
        if model.default is not None:
            spec = model.default.spec
            summary = f"Predict with {model.name} (its default version, {spec.version})"
            paths[f"/models/{model.name}/predict"] = _operation(spec, summary, f"predict_{ident}", limit)
        for number, version in model.versions.items():
            paths[f"/models/{model.name}/versions/{number}/predict"] = _operation(
                version.spec, f"Predict with {model.name} version {number}", f"predict_{ident}_v{number}", limit
            )
    return paths


def install(app: FastAPI) -> None:
    """Serve the generated document from the registry the app's `DataPlane` holds (rebuilt after changes:
    the lifespan makes `reset` a listener of the DataPlane)."""

    def openapi() -> dict[str, Any]:
        dp: DataPlane | None = getattr(app.state, "dataplane", None)
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            _, defs = models_json_schema(
                [(m, "serialization") for m in _SCHEMAS], ref_template="#/components/schemas/{model}"
            )
            document.setdefault("components", {}).setdefault("schemas", {}).update(defs.get("$defs", {}))
            if dp is not None:
                document["paths"] = {**_predict_paths(dp), **document["paths"]}
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def reset(app: FastAPI) -> None:
    app.openapi_schema = None
