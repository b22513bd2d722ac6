"""The REST API's presets: saved settings to start a conversation with (`preset_id` on
`POST /api/conversations`). A person's own, and those staff shared with everyone (chat/presets.py).

Another person's own preset is a 404; a shared one is read by all and changed by staff only (a
404 to anyone else, as for something they cannot reach).
"""

from datetime import datetime
from typing import Annotated, Any

from asgiref.sync import async_to_sync
from ninja import Router, Schema, Status
from pydantic import Field

from api.auth import AuthenticatedRequest
from api.errors import ApiError
from api.schemas import CONFLICTS, ERRORS, GenerationSettings, SystemPrompt, checked_by, path_id
from chat import presets, rules
from chat.models import Preset
from engine import catalog

router = Router(tags=["presets"])

PresetName = Annotated[
    str,
    checked_by(lambda name: rules.tidy_title(rules.storable(name))),
    Field(min_length=1, max_length=presets.PRESET_NAME_LENGTH, pattern=r"\S"),
]


class PresetChange(GenerationSettings):
    name: PresetName | None = None
    system_prompt: SystemPrompt | None = None
    shared: bool | None = Field(None, description="Seen by everyone: staff only.")


class PresetIn(PresetChange):
    name: PresetName


class PresetOut(Schema):
    id: int
    name: str
    shared: bool
    mine: bool = Field(description="Made by the caller (else shared by staff)")
    system_prompt: str
    model: str = Field(description="The model that answers; empty: the site's default model")
    temperature: float
    top_p: float
    max_tokens: int
    created_at: datetime
    updated_at: datetime

    @staticmethod
    def resolve_mine(preset: Preset, context: dict[str, Any]) -> bool:
        return bool(preset.owner_id == context["request"].auth.pk)


def _apply(request: AuthenticatedRequest, preset: Preset, data: PresetChange) -> Preset:
    if data.shared and not request.auth.is_staff:
        raise ApiError(403, "Only staff share presets with everyone.")
    if data.model:
        async_to_sync(catalog.check)(data.model)  # a model no engine serves now: 404
    for name in ("name", "system_prompt", "shared", "temperature", "max_tokens", "top_p", "model"):
        if (value := getattr(data, name)) is not None:
            setattr(preset, name, value)
    preset.save()
    return preset


@router.get("/presets", response={200: list[PresetOut], **ERRORS})
def list_presets(request: AuthenticatedRequest) -> list[Preset]:
    """The caller's presets and the shared ones, by name."""
    return list(presets.seen_by(request.auth))


@router.post("/presets", response={201: PresetOut, **CONFLICTS})
def create_preset(request: AuthenticatedRequest, data: PresetIn) -> Status[Preset]:
    """A setting not given is the site's default, as for a new conversation."""
    if presets.too_many(request.auth):
        raise ApiError(409, presets.too_many_message(), code="conflict")
    return Status(201, _apply(request, Preset(owner=request.auth), data))


@router.get("/presets/{preset_id}", response={200: PresetOut, **ERRORS})
def read_preset(request: AuthenticatedRequest, preset_id: int = path_id()) -> Preset:
    return presets.preset_or_404(request.auth, preset_id)


@router.patch("/presets/{preset_id}", response={200: PresetOut, **ERRORS})
def change_preset(request: AuthenticatedRequest, data: PresetChange, preset_id: int = path_id()) -> Preset:
    return _apply(request, presets.changeable_or_404(request.auth, preset_id), data)


@router.delete("/presets/{preset_id}", response={204: None, **ERRORS})
def delete_preset(request: AuthenticatedRequest, preset_id: int = path_id()) -> Status[None]:
    presets.changeable_or_404(request.auth, preset_id).delete()
    return Status(204, None)
