"""The registry over HTTP: models, versions, uploads, promotion and removal."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Path, Response, UploadFile

from mlapi.api.dataplane import DataPlane, VersionState
from mlapi.api.limits import BodyTooLarge
from mlapi.api.routes import AUTH_RESPONSES, CallerDep, DataPlaneDep
from mlapi.schemas import DefaultVersion, Error, ModelDetail, ModelSummary, VersionInfo
from mlapi.storage.registry import Model

router = APIRouter(tags=["models"], responses=AUTH_RESPONSES)
Version = Annotated[int, Path(ge=1, le=2**31 - 1)]
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    403: {"model": Error, "description": "The key may not use this model, or is not an admin key"},
    404: {"model": Error, "description": "Unknown model or version"},
}


def _detail(model: Model) -> ModelDetail:
    assert model.default is not None
    return ModelDetail(
        **model.default.spec.model_dump(), default_version=model.default.spec.version, versions=list(model.versions)
    )


def _info(state: VersionState) -> VersionInfo:
    version, spec = state.version, state.version.spec
    return VersionInfo(
        model=spec.name, version=spec.version, default=state.model.default_version == spec.version,
        runtime=spec.runtime, task=spec.task, sha256=version.sha256, size=version.size, trusted=spec.trusted,
        metrics=spec.metrics, created_at=version.created_at, status="ready" if state.ready else "unavailable",
        ready=state.ready, load_errors=state.load_errors, profiled=version.profile is not None,
        predict=f"/models/{spec.name}/versions/{spec.version}/predict", spec=spec,
    )  # fmt: skip


async def _summary(dp: DataPlane, model: Model) -> ModelSummary | None:
    if model.default is None:
        return None
    spec = model.default.spec
    return ModelSummary(
        name=model.name, description=model.description, default_version=spec.version,
        versions=list(model.versions), runtime=spec.runtime, task=spec.task, labels=spec.labels,
        ready=await dp.live((model.name, spec.version)), predict=f"/models/{model.name}/predict",
        spec=f"/models/{model.name}",
    )  # fmt: skip


@router.get("/models")
async def list_models(dp: DataPlaneDep, caller: CallerDep) -> list[ModelSummary]:
    """Every model with its default version (those the key may use)."""
    allowed = caller.models
    summaries = [await _summary(dp, m) for m in dp.snapshot.values() if allowed is None or m.name in allowed]
    return [s for s in summaries if s is not None]


@router.get("/models/{name}", responses=NOT_FOUND)
async def get_model(name: str, dp: DataPlaneDep, caller: CallerDep) -> ModelDetail:
    """The default version's spec: what a sample holds and what the model answers; and the model's versions."""
    dp.version(name)
    dp.permit(caller, model=name)
    return _detail(dp.model(name))


@router.get("/models/{name}/versions", responses=NOT_FOUND)
async def list_versions(name: str, dp: DataPlaneDep, caller: CallerDep) -> list[VersionInfo]:
    dp.model(name)
    dp.permit(caller, model=name)
    return [_info(await dp.state(name, number)) for number in dp.model(name).versions]


@router.get("/models/{name}/versions/{version}", responses=NOT_FOUND)
async def get_version(name: str, version: Version, dp: DataPlaneDep, caller: CallerDep) -> VersionInfo:
    """A version's spec, metrics and artifact digest, and how many live workers hold it loaded."""
    dp.model(name)
    dp.permit(caller, model=name)
    return _info(await dp.state(name, version))


@router.post(
    "/models/{name}/versions",
    status_code=201,
    responses={
        403: {"model": Error, "description": "Not an admin key"},
        409: {"model": Error, "description": "The model already has this artifact"},
        413: {"model": Error, "description": "Artifact larger than MLAPI_API__MAX_ARTIFACT_BYTES"},
        422: {"model": Error, "description": "Refused: invalid name, spec or artifact, with the reason"},
        503: {"model": Error, "description": "No live worker could check the artifact"},
    },
)
async def add_version(
    name: str,
    dp: DataPlaneDep,
    caller: CallerDep,
    artifact: Annotated[UploadFile, File(description="The trained model (skops for scikit-learn)")],
    spec: Annotated[str, Form(description="The version's spec as JSON (`SpecBody`; `mlapi models add` infers it)")],
    profile: Annotated[
        str | None,
        Form(
            description="The training data's reference profile as JSON (`Profile`; `mlapi models add --data` "
            "computes it), which drift is measured against"
        ),
    ] = None,
    promote: bool = False,
) -> VersionInfo:
    """Add a version: checked here, load-checked by a worker, then stored and served by every process."""
    dp.permit(caller, admin="add models")
    limit = dp.settings.api.max_artifact_bytes
    data = await artifact.read(limit + 1)
    if len(data) > limit:
        raise BodyTooLarge(f"artifact exceeds the limit of {limit} bytes")
    stored = await dp.add_version(name, spec, data, promote=promote, profile_json=profile)
    return _info(await dp.state(name, stored.spec.version))


@router.put("/models/{name}/default", responses={**NOT_FOUND, 422: {"model": Error}})
async def set_default(name: str, body: DefaultVersion, dp: DataPlaneDep, caller: CallerDep) -> ModelDetail:
    """Make a version the default: `POST /models/{name}/predict` serves it from now on."""
    dp.permit(caller, admin="promote versions")
    return _detail(await dp.promote(name, body.version))


@router.delete(
    "/models/{name}/versions/{version}", status_code=204,
    responses={**NOT_FOUND, 409: {"model": Error, "description": "The default version, or work is queued"}},
)  # fmt: skip
async def remove_version(name: str, version: Version, dp: DataPlaneDep, caller: CallerDep) -> Response:
    dp.permit(caller, admin="remove versions")
    await dp.remove_version(name, version)
    return Response(status_code=204)


@router.delete(
    "/models/{name}", status_code=204,
    responses={**NOT_FOUND, 409: {"model": Error, "description": "Work is queued for it"}},
)  # fmt: skip
async def remove_model(name: str, dp: DataPlaneDep, caller: CallerDep) -> Response:
    dp.permit(caller, admin="remove models")
    await dp.remove_model(name)
    return Response(status_code=204)
