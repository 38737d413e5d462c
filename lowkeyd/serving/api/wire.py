"""What the local API sends, defined once: the server serialises these, the client validates them,
and the OpenAPI description takes their JSON schema (:mod:`lowkeyd.serving.api.openapi`).

Needs pydantic alone, like the client that parses them; the server builds them from an
:class:`~lowkeyd.pipeline.Outcome` in :mod:`lowkeyd.serving.api.routes`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lowkeyd.engine.presets import Preset

# POST /v1/cloak's answer is the photo; its summary travels in this header.
SUMMARY_HEADER = "X-Lowkeyd-Summary"
# A member's name -> a number about that member (ensemble members, as the engine names them).
PerMember = dict[str, float]


class _Wire(BaseModel):
    # Frozen: an answer is a record of what happened, not something to edit on the way through.
    model_config = ConfigDict(frozen=True)


class Error(_Wire):
    error: str


class Face(_Wire):
    box: tuple[float, float, float, float] = Field(description="x0, y0, x1, y1 in photo pixels")
    size: float = Field(description="face size in pixels")
    status: Literal["cloaked", "too_small"]
    similarity: PerMember = Field(description="ensemble member -> cosine similarity of the cloaked face to the original")
    thresholds: PerMember = Field(description="ensemble member -> its match threshold")
    protected_against: dict[str, bool]
    lpips: float | None = Field(description="perceptual change of the face (LPIPS)")


class EstimateGroup(_Wire):
    """One group of faces in a holdout estimate: per measure the mean over folds, the worst fold and its 95% interval.

    Each is null where the group has nothing to measure (no other photo of its people, for cross_social).
    """

    faces: int
    self_social: float | None
    self_social_worst_fold: float | None
    self_social_worst_fold_interval: tuple[float, float] | None
    cross_social: float | None
    cross_social_worst_fold: float | None
    cross_social_worst_fold_interval: tuple[float, float] | None


class HoldoutEstimate(EstimateGroup):
    """What ``lowkeyd bench --holdout`` measured on the varied test set for this preset.

    The fraction of faces a recogniser left out of the attack fails to match after resize + JPEG
    against their own original (self_social) and the person's other photos (cross_social), for
    every face and, in categories, for this photo's kinds of face (black-and-white, small).
    """

    preset: str
    folds: int
    categories: dict[str, EstimateGroup]


class Summary(_Wire):
    """One photo's outcome, in the ``X-Lowkeyd-Summary`` header of ``POST /v1/cloak`` and in a done job."""

    status: Literal["cloaked", "no_face", "already_cloaked"]
    message: str
    faces_cloaked: int = Field(ge=0)
    faces_too_small: int = Field(ge=0)
    preset: str
    preset_settings: Preset = Field(
        description="every setting of the attack that ran (the preset's, with the daemon's attack: overrides)"
    )
    seconds: float
    protected_against: dict[str, bool] = Field(
        description="attack member -> every cloaked face is past its match threshold (white-box: the attack "
        "optimised against these very models)"
    )
    faces: list[Face]
    holdout_estimate: HoldoutEstimate | None = Field(
        description="null for a preset not measured with its present settings"
    )


class Job(_Wire):
    id: str
    status: Literal["queued", "running", "done", "failed"]
    path: str = Field(description="the source file, symlinks resolved")
    root: str = Field(description="the job root's name; the outbox folder it is published in")
    created: float = Field(description="Unix time")
    finished: float | None
    output: str | None = Field(description="the published photo in the outbox")
    summary: Summary | None
    error: str | None


class Queue(_Wire):
    busy: int
    size: int


class Status(_Wire):
    """The daemon's status; a service adds what it knows of itself (lowkeyd serve: ``service``)."""

    model_config = ConfigDict(extra="allow")

    version: str
    pid: int
    started: float
    ready: bool = Field(description="the models are loaded")
    preset: str
    preset_settings: Preset | None = Field(
        None, description="every setting of the attack the models run (the preset's, with the config's attack: "
        "overrides); null from a lowkeyd that did not send them"
    )
    device: str | None
    queue: Queue
    jobs: dict[str, int]
    files: dict[str, int] | None = Field(
        None, description="watched files per state (queued, done, failed, held: short of the target under below_target: hold...) and done ones per outcome"
    )
    hooks: dict[str, int] | None = Field(None, description="publish hook runs: ok, failed, pending; null without a hook")


def first_problem(exc: ValidationError) -> str:
    """A validation error in one line: where the first problem is, what it is, and how many more there are."""
    errors = exc.errors()
    where = ".".join(str(part) for part in errors[0]["loc"])
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where + ': ' if where else ''}{errors[0]['msg']}{more}"
