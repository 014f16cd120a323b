"""Encoders: a config-built open_clip model, and clear errors for weights that cannot be had."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from PIL import Image

from mmdlrm.config import FeatureConfig
from mmdlrm.features import encoders
from mmdlrm.features.encoders import FeatureError, build_encoders


def test_config_built_clip_encodes_unit_vectors_reproducibly(tiny_clip_config):
    image, text = build_encoders(tiny_clip_config, torch.device("cpu"))
    assert image is text and image.dim == 32 and image.name == "open_clip:test-tiny-clip:random"
    red, green = (image.preprocess(Image.new("RGB", (40, 60), c)) for c in ("red", "green"))
    vectors = image.encode_images(torch.stack([red, green]))
    assert vectors.shape == (2, 32)
    torch.testing.assert_close(vectors.norm(dim=1), torch.ones(2))
    assert (vectors[0] - vectors[1]).abs().max() > 1e-3  # the input matters
    texts = text.encode_texts(["a gloomy film", "a bright film"])
    again, _ = build_encoders(tiny_clip_config, torch.device("cpu"))  # random init, but seeded: same vectors
    torch.testing.assert_close(again.encode_texts(["a gloomy film", "a bright film"]), texts)


def test_missing_checkpoint_file_is_named():
    with pytest.raises(FeatureError, match="features.clip_pretrained=/no/such/open_clip_pytorch_model.bin: no such"):
        build_encoders(FeatureConfig(clip_pretrained="/no/such/open_clip_pytorch_model.bin"), torch.device("cpu"))


def test_unknown_tag_lists_the_known_ones():
    with pytest.raises(FeatureError, match="not a weights tag of ViT-B-32; its tags: openai, .*laion2b_s34b_b79k"):
        build_encoders(FeatureConfig(clip_pretrained="laion9000"), torch.device("cpu"))


def test_unknown_architecture_says_how_to_define_one():
    with pytest.raises(FeatureError, match="features.clip_model=ViT-Q-99 is not an open_clip architecture.*clip_model_config"):
        build_encoders(FeatureConfig(clip_model="ViT-Q-99"), torch.device("cpu"))


def test_offline_without_cached_weights_says_how_to_supply_a_checkpoint(monkeypatch):
    monkeypatch.setattr(encoders, "_hub_reachable", lambda repo: False)
    with pytest.raises(FeatureError) as err:
        build_encoders(FeatureConfig(), torch.device("cpu"))
    message = str(err.value)
    assert "https://huggingface.co/laion/CLIP-ViT-B-32-laion2B-s34B-b79K/blob/main/open_clip_pytorch_model.bin" in message
    assert "features.clip_pretrained=/path/to/open_clip_pytorch_model.bin" in message


def test_minilm_gives_real_semantic_vectors_offline():
    _, text = build_encoders(dataclasses.replace(FeatureConfig(), text_encoder="minilm"), torch.device("cpu"), images=False)
    v = text.encode_texts(["a violent gangster crime thriller", "a mafia murder story", "a cute animated family comedy"])
    assert v.shape == (3, 384)
    similarity = v @ v.T
    assert similarity[0, 1] > similarity[0, 2] + 0.2  # real weights: crime is nearer crime than a family comedy
