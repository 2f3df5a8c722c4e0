"""Is the SimCLR encoder a sound basis for FID? Checked on MNIST, where the classifier gives a reference answer.

1. Real against real: FID of 1000 real images, disjoint from the cells' reference (the first 2000 test images),
   against it, for both extractors, next to the FIDs the sweep's cells reach.
2. Ranking: the same sweep scored by each extractor (the default config, and again with quality.extractor=simclr)
   ranks its cells alike: Spearman's ρ and Kendall's τ over the cells both stores hold, one row per set of images.

    python -m bench sweep --set quality.extractor=simclr --set name=extractor_simclr
    python tests/benchmarks/extractor_validity.py results/default results/extractor_simclr \\
        --json results/extractor_simclr/validity.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import torch
from scipy.stats import kendalltau, spearmanr

from bench import data, train
from bench.compare import match_key
from bench.measure import quality
from bench.store import load

# Real sets disjoint from the reference (test[:2000]): two of the same writers' part of the test split, one of its
# other part, and two of the training split. MNIST's test split is ordered by writer population, so its first
# images are not a random draw of the split (measured here: see the README).
REAL_SETS = {"test[2000:3000]": ("test", 2000, 3000), "test[3000:4000]": ("test", 3000, 4000),
             "test[5000:6000]": ("test", 5000, 6000), "train[0:1000]": ("train", 0, 1000),
             "train[1000:2000]": ("train", 1000, 2000)}


def real_vs_real(choice: str, reference_n: int, seed: int = 0) -> list[dict]:
    """FID of each real set against the first ``reference_n`` test images (the cells' reference)."""
    extractor = train.resolve_extractor(choice, "mnist", 16)
    reference = quality.reference_features("mnist", "test", 16, reference_n, extractor)
    out = []
    for name, (split, start, stop) in REAL_SETS.items():
        images = data.load("mnist", split, 16).images[start:stop]
        q = quality.compute(images, reference, extractor, bootstrap=200, seed=seed)
        out.append({"extractor": choice, "real_images": name, "fid": round(q["fid"], 4),
                    "fid_ci": [round(q["fid_ci_low"], 4), round(q["fid_ci_high"], 4)],
                    "fid_inf": round(q["fid_inf"], 4), "kid": q["kid"], "precision": q["precision"],
                    "recall": q["recall"]})
    return out


def matched(classifier_store: Path, simclr_store: Path) -> pd.DataFrame:
    """Cells of the two stores with the same technique, params, steps and hardware; one row per set of images (the
    rows that reuse another cell's quality are dropped: they repeat its FID)."""
    frames = []
    for path, tag in ((classifier_store, "classifier"), (simclr_store, "simclr")):
        df = load(path)
        df = df[(df["status"] == "ok") & df["quality_reused_from"].isna()].copy()
        # same images: threads, batch and machine do not change them (each reuse proved it byte for byte)
        df["key"] = df.apply(lambda r: match_key(r, ("machine", "extractor", "threads", "batch")), axis=1)
        df = df.drop_duplicates("key")
        frames.append(df.set_index("key")[["technique", "params", "steps", "nfe", "fid"]].add_suffix(f"_{tag}"))
    both = frames[0].join(frames[1], how="inner")
    return both.rename(columns={"technique_classifier": "technique", "params_classifier": "params",
                                "steps_classifier": "steps", "nfe_classifier": "nfe"})[
        ["technique", "params", "steps", "nfe", "fid_classifier", "fid_simclr"]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("classifier_store", type=Path)
    p.add_argument("simclr_store", type=Path)
    p.add_argument("--reference-n", type=int, default=2000)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    torch.set_num_threads(2)

    cells = matched(args.classifier_store, args.simclr_store)
    rho, tau = spearmanr(cells["fid_classifier"], cells["fid_simclr"]), kendalltau(cells["fid_classifier"],
                                                                                 cells["fid_simclr"])
    reals = real_vs_real("classifier", args.reference_n) + real_vs_real("simclr", args.reference_n)
    lowest = {"classifier": float(cells["fid_classifier"].min()), "simclr": float(cells["fid_simclr"].min())}
    print(pd.DataFrame(reals)[["extractor", "real_images", "fid", "fid_ci", "fid_inf"]].to_string(index=False))
    for tag, low in lowest.items():
        same = max(r["fid"] for r in reals if r["extractor"] == tag and r["real_images"].startswith("test[")
                   and REAL_SETS[r["real_images"]][2] <= 5000)
        print(f"{tag}: real-vs-real FID (same writers as the reference) at most {same:.3f}; the best cell's {low:.3f} "
              f"(real / best cell = {same / low:.2f})")
    print(f"\n{len(cells)} matched cells (one per set of images): Spearman rho = {rho.statistic:.3f} "
          f"(p = {rho.pvalue:.1e}), Kendall tau = {tau.statistic:.3f} (p = {tau.pvalue:.1e})")
    print(cells.sort_values("fid_classifier").to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "command": "python tests/benchmarks/extractor_validity.py " + " ".join(
                map(str, [args.classifier_store, args.simclr_store])),
            "real_vs_real": reals, "best_cell_fid": lowest,
            "rank_correlation": {"cells": len(cells), "spearman_rho": rho.statistic, "spearman_p": rho.pvalue,
                                 "kendall_tau": tau.statistic, "kendall_p": tau.pvalue},
            "cells": cells.to_dict(orient="records")}, indent=1, default=float))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
