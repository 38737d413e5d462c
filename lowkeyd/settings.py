"""How a photo is protected: the resolved attack and the photo policies, in one object.

Every front door builds a :class:`ProtectionSettings` once, from what its user wrote (the
daemon's ``config.yaml``, ``lowkeyd cloak``'s options, ``lowkeyd serve``'s options or a Serve
config's ``args:``), and hands it whole to :class:`~lowkeyd.pipeline.PhotoProtector`; the
cluster ships it to its model replicas as it is. The preset in it is resolved (overrides
applied), so nothing downstream looks a preset up by name again.

The names and values a user may write are defined here once: the policy literals, the
device.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from lowkeyd.engine.presets import PRESETS, Preset, apply_overrides, get_preset
from lowkeyd.errors import EngineError, LowkeydError

# A photo without a face: publish its sanitised copy, or leave it out.
NoFacePolicy = Literal["copy", "skip"]
# A face the visibility budget let past every recogniser's threshold but not to the preset's target margin.
BelowTargetPolicy = Literal["publish", "hold"]

# torch device strings the engine can be asked for; whether the device exists is the engine's question.
_DEVICE = re.compile(r"cpu|mps|cuda(:\d+)?")


def _torch_device(device: str) -> str:
    if not _DEVICE.fullmatch(device):
        # A custom error keeps the message as written (no "Value error, " prefix in what the user reads).
        raise PydanticCustomError("bad_device", f"expected cpu, cuda, cuda:N or mps, not {device!r}")
    return device


Device = Annotated[str, AfterValidator(_torch_device)]


class ProtectionSettings(BaseModel):
    """The attack, resolved, and what is done with each photo around it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: Preset = PRESETS["default"]
    # Where the models run; None: the best available.
    device: Device | None = None
    strip_gps: bool = True
    no_face: NoFacePolicy = "copy"
    below_target: BelowTargetPolicy = "publish"
    # Largest photo taken; None leaves it to the front door (the daemon sizes it to the machine's memory).
    max_megapixels: float | None = Field(default=None, gt=0)
    # Write lowkeyd's XMP marker (version, preset, models) into what is published; off, nothing in a
    # published photo's metadata tells a scraper it was cloaked.
    mark: bool = False

    @property
    def max_pixels(self) -> int | None:
        return None if self.max_megapixels is None else int(self.max_megapixels * 1e6)

    @classmethod
    def resolve(
        cls, preset: str = "default", overrides: Mapping[str, object] | None = None, **policies: object
    ) -> ProtectionSettings:
        """The preset named ``preset`` with ``overrides`` applied, and the ``policies`` given (None: the default).

        The one place a preset's name is looked up. A bad name, override or policy is a one-line
        :class:`~lowkeyd.errors.LowkeydError` naming it.
        """
        try:
            base = get_preset(preset)
        except EngineError as exc:
            raise LowkeydError(f"preset: {exc}") from None
        given = {name: value for name, value in policies.items() if value is not None}
        try:
            return cls.model_validate({"preset": apply_overrides(base, overrides or {}), **given})
        except ValidationError as exc:
            problem = exc.errors()[0]
            raise LowkeydError(f"{'.'.join(str(part) for part in problem['loc'])}: {problem['msg']}") from None
