"""The quality benchmark's trunk reuse: only from a run that trained it with the same settings."""

from __future__ import annotations

import dataclasses

import pytest

from genrecls.config import TrainConfig
from genrecls.errors import GenreclsError
from genrecls.quality import checked_trunk
from genrecls.runs import RunFolder


def test_a_trunk_is_reused_only_from_a_run_with_the_same_trunk_settings(tmp_path):
    cfg = TrainConfig(data=str(tmp_path), mode="multilabel", backbone="simple", weights=None, trunk="shared")
    folder = RunFolder.claim(tmp_path / "multilabel", cfg)
    trunk = folder.trunk_path
    trunk.parent.mkdir(parents=True, exist_ok=True)
    trunk.write_bytes(b"stage 1")
    # the mode, the text and the decision settings are fitted on the trunk: reusable
    assert checked_trunk(trunk, dataclasses.replace(cfg, mode="ova", text=["title"], optimize="macro")) == trunk
    for change, named in ((dict(seed=1), "seed"), (dict(image_size=96), "image_size"), (dict(trunks=2), "trunks"),
                          (dict(data=str(tmp_path / "other")), "data")):
        with pytest.raises(GenreclsError, match=named):
            checked_trunk(trunk, dataclasses.replace(cfg, **change))
    stray = tmp_path / "trunk.keras"
    stray.write_bytes(b"")
    with pytest.raises(GenreclsError, match="checkpoints/trunk.keras"):
        checked_trunk(stray, cfg)
