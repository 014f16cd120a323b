"""Multimodal ablation and costs: ids only, + text, + image, + both, with the same seed and budget.

By default on the built-in synthetic release (configs/synthetic.yaml: ml-25m CSV layout, generated under
data.cache_dir, with posters and summaries that show each movie's hidden quality and traits), with a randomly
initialised small CLIP for posters (no weights can be downloaded here) and the real all-MiniLM-L6-v2 for summaries:
- extraction throughput: posters/s (decode in DataLoader workers + CLIP) and texts/s (MiniLM, and CLIP's text
  tower), each measured on the release's own inputs (synthetic release only);
- test RMSE of each variant, overall and on the cold-start slice (movies with few training ratings), beside the
  user+movie bias baseline; every variant trains the same number of epochs from the same seed;
- training samples/s of each variant as a ratio to ids only (the cost of the dense content features).

`--config` and `data.source=` run it on any MovieLens release the readers know (CSV, ml-1m / ml-10m `.dat`,
ml-100k), text only unless posters are given. The release it ran on (folder, layout and files, counts, split; from
the prepared manifest) is printed first and written to the JSON as "release".

    python benchmarks/bench_multimodal.py                    # about 6 minutes on 2 cores
    python benchmarks/bench_multimodal.py --config configs/ml-latest-small-text.yaml --variants none text
    python benchmarks/bench_multimodal.py --config configs/ml-latest-small-text.yaml data.source=/path/to/ml-100k \
        features.summaries=<summaries CSV keyed by its movieIds> --variants none text
Prints tables and writes benchmarks/results/multimodal.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import print_table, write_json  # noqa: E402
from mmdlrm.config import DataConfig, load_config  # noqa: E402
from mmdlrm.data.prepare import ensure_prepared  # noqa: E402
from mmdlrm.distributed.env import init_distributed, teardown  # noqa: E402
from mmdlrm.features.encoders import build_encoders  # noqa: E402
from mmdlrm.features.extract import extract  # noqa: E402
from mmdlrm.features.inputs import catalogue_texts, read_passages, read_posters  # noqa: E402
from mmdlrm.train import train  # noqa: E402

SYNTHETIC_FEATURES = ["features.clip_model=mmdlrm-tiny-clip", "features.clip_pretrained=random",
                      "features.text_encoder=minilm"]  # fmt: skip


def release_info(data: DataConfig) -> dict:
    """The release the ablation runs on, from its prepared manifest: folder, layout and files, counts, split."""
    prepared = ensure_prepared(data)
    manifest = json.loads((prepared / "manifest.json").read_text())
    source = manifest["source"]
    counts = {k: v for k, v in manifest["counts"].items() if k in ("users", "movies", "ratings")}
    return {"source": data.source, "folder": source["folder"], "kind": source["kind"], "files": sorted(source["files"]),
            "counts": counts, "split": manifest["split"], "prepared": str(prepared)}  # fmt: skip


def bench_extraction(cfg, release: Path) -> list[dict]:
    """Posters/s and texts/s of each encoder on the release's inputs (a fresh store each, nothing reused)."""
    posters = read_posters(release / "posters")
    summaries = read_passages(release / "summaries.csv")
    ids = sorted(posters)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        extract(cfg, Path(tmp) / "both", ids, posters, summaries, catalogue_texts(release), torch.device("cpu"), False)
        rows.append({"what": f"posters + texts ({cfg.text_encoder} text), stored", "items": len(ids),
                     "items_per_s": len(ids) / (time.perf_counter() - start)})  # fmt: skip
    image, _ = build_encoders(cfg, torch.device("cpu"), texts=False)
    pixels = torch.stack([image.preprocess(Image.open(posters[m]).convert("RGB")) for m in ids[:512]])
    start = time.perf_counter()
    for chunk in pixels.split(cfg.batch_size):
        image.encode_images(chunk)
    rows.append({"what": f"posters, {image.name} (encode only)", "items": len(pixels),
                 "items_per_s": len(pixels) / (time.perf_counter() - start)})  # fmt: skip
    texts = [summaries["summary"][m] for m in ids[:512]]
    for encoder in ("minilm", "open_clip"):
        _, text = build_encoders(dataclasses.replace(cfg, text_encoder=encoder), torch.device("cpu"), images=False)
        start = time.perf_counter()
        for i in range(0, len(texts), cfg.batch_size):
            text.encode_texts(texts[i : i + cfg.batch_size])
        rows.append({"what": f"texts, {text.name}", "items": len(texts), "items_per_s": len(texts) / (time.perf_counter() - start)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/synthetic.yaml")
    parser.add_argument("--variants", nargs="+", default=["none", "text", "image", "both"])
    parser.add_argument("--epochs", type=int, default=4, help="the same budget for every variant")
    parser.add_argument("--output-dir", default="runs/bench-multimodal")
    parser.add_argument("overrides", nargs="*", help="config overrides for every variant")
    parser.add_argument("--out", help="JSON path (default benchmarks/results/multimodal.json)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("mmdlrm").setLevel(logging.INFO)

    synthetic = load_config(args.config, args.overrides).data.source == "synthetic"  # data.source= may override
    base = [*(SYNTHETIC_FEATURES if synthetic else []), *args.overrides, f"output_dir={args.output_dir}",
            f"train.max_epochs={args.epochs}", f"train.min_epochs={args.epochs}", "train.progress=false"]  # fmt: skip
    cfg = load_config(args.config, base)
    release = release_info(cfg.data)
    print(f"release: {release['folder']} ({release['kind']} layout: {', '.join(release['files'])}; "
          f"{release['counts']['users']:,} users, {release['counts']['movies']:,} movies, "
          f"{release['counts']['ratings']:,} ratings; {release['split']['kind']} split)")  # fmt: skip
    extraction = bench_extraction(cfg.features, Path(release["folder"])) if synthetic else []

    variants, rows = [], []
    for modality in args.variants:
        cfg = load_config(args.config, [*base, f"features.modalities={modality}", f"name={modality}"])
        env = init_distributed(cfg.train.device)
        try:
            result = train(cfg, env)
        finally:
            teardown()
        rate = sum(e["samples_per_s"] for e in result.epochs) / len(result.epochs)
        variants.append({"modalities": modality, "test": result.test, "baselines": result.baselines,
                         "samples_per_s": rate, "best_epoch": result.best_epoch})  # fmt: skip
    ids_only = next((v for v in variants if v["modalities"] == "none"), variants[0])
    for v in variants:
        rows.append({"modalities": v["modalities"], "test_rmse": v["test"]["rmse"],
                     "cold_rmse": v["test"]["cold_start"]["rmse"],
                     "cold_vs_ids_only": v["test"]["cold_start"]["rmse"] / ids_only["test"]["cold_start"]["rmse"],
                     "bias_rmse": v["baselines"]["bias"]["test"]["rmse"],
                     "bias_cold_rmse": v["baselines"]["bias"]["test_cold_start"]["rmse"],
                     "samples_per_s": v["samples_per_s"], "speed_vs_ids_only": v["samples_per_s"] / ids_only["samples_per_s"]})  # fmt: skip
    if extraction:
        print_table(extraction, ["what", "items", "items_per_s"])
        print()
    print_table(rows, ["modalities", "test_rmse", "cold_rmse", "cold_vs_ids_only", "bias_rmse", "bias_cold_rmse",
                       "samples_per_s", "speed_vs_ids_only"])  # fmt: skip
    payload = {"args": vars(args), "release": release, "extraction": extraction, "variants": variants, "table": rows}
    path = write_json("multimodal", payload, args.out)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
