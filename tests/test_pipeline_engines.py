"""What a PhotoProtector does without an engine of its own, and the one colour/grayscale split.

A daemon whose photos a remote lowkeyd cloaks (``remote:``) keeps a protector without a cloaker:
it reads photos under the daemon's pixel limit and publishes lowkeyd's own output as it is,
sanitised; any other photo goes to the remote, and were it handed to this protector instead it
would fail, never be published uncloaked.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import photo_fixtures as fx
import pytest

from lowkeyd.engine.presets import PRESETS
from lowkeyd.errors import EngineError
from lowkeyd.photo import read_photo
from lowkeyd.pipeline import PhotoProtector, colour_groups
from lowkeyd.settings import ProtectionSettings


def test_without_a_cloaker_only_lowkeyds_own_output_is_published(tmp_path: Path) -> None:
    own = fx.rich_jpeg(tmp_path / "own.jpg")
    other = tmp_path / "other.jpg"
    other.write_bytes(fx.jpeg_bytes(fx.face(0.8), quality=90))
    settings = ProtectionSettings().model_copy(update={"preset": PRESETS["strong"]})  # the remote's, from its status
    rules = PhotoProtector(None, settings, is_own_output={hashlib.sha256(own.read_bytes()).hexdigest()}.__contains__)
    (tmp_path / "out").mkdir()

    published = rules.protect_without_attack(rules.read(own), tmp_path / "out" / "own.jpg")
    assert published is not None and published.status == "already_cloaked" and published.preset.name == "strong"
    assert published.written == tmp_path / "out" / "own.jpg"
    assert not read_photo(published.written).has_location  # sanitised all the same

    # Another photo needs the attack: the fast lane leaves it to the remote, and nothing here publishes it.
    dest = tmp_path / "out" / "other.jpg"
    assert rules.protect_without_attack(rules.read(other), dest) is None
    [failed] = rules.protect_files([(other, dest)])
    assert isinstance(failed, EngineError) and "no attack runs here" in str(failed)
    with pytest.raises(EngineError, match="no attack runs here"):
        rules.protect_bytes(other.read_bytes())
    assert not dest.exists()
    assert rules.device == "elsewhere (a remote lowkeyd)"


def test_colour_photos_then_grayscale_ones_each_in_a_batch_of_their_own() -> None:
    assert list(colour_groups([True, False, False, True, False])) == [(False, [1, 2, 4]), (True, [0, 3])]
    assert list(colour_groups([True, True])) == [(True, [0, 1])]
    assert list(colour_groups([])) == []
