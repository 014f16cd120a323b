"""Extraction into the feature store: every movie once, resumable, tolerant of unreadable images."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from mmdlrm.features import encoders
from mmdlrm.features.extract import extract
from mmdlrm.features.inputs import catalogue_texts, read_passages, read_posters
from mmdlrm.features.store import is_complete, load_vectors, stored_movie_ids


@pytest.fixture()
def media(tiny_release, tmp_path):
    """The tiny synthetic release's posters (copied, so tests can damage them), summaries and catalogue texts."""
    shutil.copytree(tiny_release / "posters", tmp_path / "posters")
    posters = read_posters(tmp_path / "posters")
    summaries = read_passages(tiny_release / "summaries.csv")
    return sorted(posters), posters, summaries, catalogue_texts(tiny_release)


def _run(cfg, store, media, movie_ids=None, **kw):
    ids, posters, summaries, fallback = media
    return extract(cfg, store, movie_ids or ids, posters, summaries, fallback, torch.device("cpu"), progress=False, **kw)


def test_every_movie_is_stored_once_with_unit_float16_vectors(tiny_clip_config, media, tmp_path):
    ids = media[0]
    del media[2]["summary"][ids[0]]  # one movie without a summary: its text comes from the catalogue
    report = _run(tiny_clip_config, tmp_path / "store", media)
    assert report.encoded == len(ids) == 150 and report.catalogue_texts == 1 and not report.unreadable
    assert sorted(stored_movie_ids(tmp_path / "store")) == ids and is_complete(tmp_path / "store")
    table = pq.read_table(sorted((tmp_path / "store").glob("part-*.parquet"))[0])
    assert table.schema.field("image").type.value_type == "halffloat" and table["image_model"][0].as_py() == "open_clip:test-tiny-clip:random"
    assert table["text_source"].to_pylist()[0] == "catalogue"
    image = load_vectors(tmp_path / "store", np.array(ids), "image")
    norms = image.vectors.float().norm(dim=1)
    torch.testing.assert_close(norms, torch.ones(len(ids)), atol=2e-3, rtol=0)
    assert not image.missing.any()
    unknown = load_vectors(tmp_path / "store", np.array([ids[0], 99_999_999]), "text")
    assert unknown.missing.tolist() == [False, True] and unknown.vectors[1].abs().sum() == 0


def test_several_sources_give_a_slot_each_after_the_catalogue_zeros_where_a_movie_has_none(tiny_clip_config, media, tmp_path):
    ids, posters, _, fallback = media
    passages = {"plot": {ids[0]: "A heist goes wrong.", ids[1]: "Two friends travel."}, "credits": {ids[0]: "Directed by X."}}
    report = _run(tiny_clip_config, tmp_path / "store", (ids[:3], {}, passages, fallback))
    assert report.catalogue_texts == 1  # ids[2]: no source has it
    text = load_vectors(tmp_path / "store", np.array(ids[:3]), "text")
    _, encoder = encoders.build_encoders(tiny_clip_config, torch.device("cpu"), images=False)
    dim = encoder.dim
    slots = text.vectors.float().reshape(3, 3, dim)  # catalogue, credits, plot: sources in name order
    expected = {(0, 0): fallback[ids[0]], (0, 1): "Directed by X.", (0, 2): "A heist goes wrong.",
                (1, 0): fallback[ids[1]], (1, 2): "Two friends travel.", (2, 0): fallback[ids[2]]}  # fmt: skip
    for (row, slot), words in expected.items():
        torch.testing.assert_close(slots[row, slot], encoder.encode_texts([words])[0], atol=2e-3, rtol=0)
    assert slots[1, 1].abs().sum() == 0 and slots[2, 1:].abs().sum() == 0 and not text.missing.any()
    table = pq.read_table(sorted((tmp_path / "store").glob("part-*.parquet"))[0])
    assert table["text_source"].to_pylist() == ["credits+plot", "plot", "catalogue"]
    assert json.loads((tmp_path / "store" / "manifest.json").read_text())["text_slots"] == ["catalogue", "credits", "plot"]


def test_summaries_and_posters_of_movies_the_catalogue_lacks_are_counted_not_encoded(tiny_clip_config, media, tmp_path):
    ids, posters, summaries, fallback = media
    summaries = {"summary": {**summaries["summary"], 99_999_001: "Not in this release.", 99_999_002: "Nor this."}}
    posters = {**posters, 99_999_003: posters[ids[0]]}
    report = _run(tiny_clip_config, tmp_path / "store", (ids[:4], posters, summaries, fallback))
    assert report.unknown_summaries == [99_999_001, 99_999_002] and report.unknown_posters == [99_999_003]
    assert report.encoded == 4 and sorted(stored_movie_ids(tmp_path / "store")) == ids[:4]


def test_interrupted_extraction_resumes_without_duplicates(tiny_clip_config, media, tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    _run(tiny_clip_config, whole, media)
    original, calls = encoders.OpenClipEncoder.encode_images, []

    def dies_on_the_fifth_batch(self, pixels):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt  # as a kill would: mid-run, with two parts of 32 movies written
        return original(self, pixels)

    monkeypatch.setattr(encoders.OpenClipEncoder, "encode_images", dies_on_the_fifth_batch)
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_clip_config, tmp_path / "cut", media)
    assert len(stored_movie_ids(tmp_path / "cut")) == 64 and not is_complete(tmp_path / "cut")
    monkeypatch.setattr(encoders.OpenClipEncoder, "encode_images", original)
    report = _run(tiny_clip_config, tmp_path / "cut", media)
    assert report.skipped == 64 and report.encoded == 150 - 64
    stored = stored_movie_ids(tmp_path / "cut")
    assert len(stored) == len(set(stored)) == 150
    ids = np.array(media[0])
    for modality in ("image", "text"):
        a, b = load_vectors(whole, ids, modality), load_vectors(tmp_path / "cut", ids, modality)
        torch.testing.assert_close(a.vectors, b.vectors)


def test_unreadable_posters_are_named_and_stored_as_missing(tiny_clip_config, media, tmp_path, caplog):
    ids, posters = media[0], media[1]
    posters[ids[0]].write_bytes(b"this is not a png")
    good = posters[ids[1]].read_bytes()
    posters[ids[1]].write_bytes(good[: len(good) // 2])  # truncated
    del posters[ids[2]]  # and one movie with no poster at all
    report = _run(tiny_clip_config, tmp_path / "store", media)
    assert report.missing_posters == 3 and len(report.unreadable) == 2
    assert f"{ids[0]}.png" in report.unreadable[0] and f"{ids[0]}.png" in caplog.text
    image = load_vectors(tmp_path / "store", np.array(ids[:4]), "image")
    assert image.missing.tolist() == [True, True, True, False]


def test_a_store_is_never_mixed_across_encoders(tiny_clip_config, media, tmp_path):
    import dataclasses

    from mmdlrm.features.encoders import FeatureError

    _run(tiny_clip_config, tmp_path / "store", media, movie_ids=media[0][:5])
    other = dataclasses.replace(tiny_clip_config, clip_model="mmdlrm-tiny-clip", clip_model_config=None)
    with pytest.raises(FeatureError, match="holds vectors from open_clip:test-tiny-clip:random.*not open_clip:mmdlrm-tiny-clip"):
        _run(other, tmp_path / "store", media, movie_ids=media[0][:5])
