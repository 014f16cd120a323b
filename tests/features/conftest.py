"""Fixtures for the feature tests: a small randomly initialised open_clip model, built from a config."""

from __future__ import annotations

import json

import pytest

from mmdlrm.config import FeatureConfig

TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="session")
def tiny_clip_config(tmp_path_factory) -> FeatureConfig:
    """open_clip with a 1-layer ViT and text tower (no download), for both modalities."""
    path = tmp_path_factory.mktemp("clip") / "test-tiny-clip.json"
    path.write_text(json.dumps(TINY))
    return FeatureConfig(clip_model="test-tiny-clip", clip_model_config=str(path), clip_pretrained="random",
                         text_encoder="open_clip", batch_size=16, num_workers=0, part_size=32)  # fmt: skip
