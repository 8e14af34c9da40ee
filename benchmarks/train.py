"""Training benchmark: attention-MIL seconds per epoch against the arithmetic floor; LightGBM and ridge fit times.

Builds a synthetic cohort in memory (default 200 bags × 2,000 tiles × 1,024 float32 dims ≈ 1.6 GB, 35 genes, a
planted signal) and prints JSON:

- ``floor_s``: one forward + backward pass of the MIL network's matmuls (tile layer, attention, tile head) over
  all tiles as one flat array already in a torch tensor — no batching, padding, copying or optimiser: the least an
  epoch over every tile can cost;
- ``mil_all_tiles``: seconds per epoch of ``AttentionMILRegressor`` on the features as they are
  (``pca_components=None``) using every tile of every bag (batches of 8 bags, padding, masking, AdamW), without
  and with the early-stopping validation pass, and each ÷ ``floor_s`` (target ≤ 3);
- ``mil_default``: seconds per epoch with the default settings (every tile, projected on 16 principal axes of
  the training tiles, the projection's fit included in ``fit_s``), and ÷ ``floor_s``;
- ``nested``: the seconds of the ``mil`` model's fit (:class:`NestedMIL`: one network per inner fold, the readout
  features and their stack) ÷ the seconds of one network's fit on all the bags, the same epochs each — what the
  nested selection costs;
- ``lgbm_fit_s``, ``ridge_fit_s``: fitting the pooled baselines on the same cohort (pooling included);
- the same MIL figures on CUDA (bf16 autocast) when a GPU is available.

Epoch times are the median of epochs 2.. of a short fit (the first epoch warms up). Run:
``python benchmarks/train.py`` (``--bags 40 --tiles 500 --dim 256`` for a quick check).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from slide2expr.regress import AttentionMILRegressor, lgbm_regressor, make_model, ridge_regressor  # noqa: E402


def make_cohort(n_bags: int, n_tiles: int, dim: int, n_genes: int, seed: int = 0):
    """``n_bags`` bags of ``n_tiles`` × ``dim`` float32 (views into one flat array) and ``(n_bags, n_genes)`` y."""
    rng = np.random.default_rng(seed)
    flat = rng.standard_normal((n_bags * n_tiles, dim), dtype=np.float32)
    bags = [flat[i * n_tiles : (i + 1) * n_tiles] for i in range(n_bags)]
    w = rng.normal(size=(dim, n_genes)).astype(np.float32) / np.sqrt(dim)
    Y = np.stack([np.maximum(b[:, :64] @ w[:64], 0).mean(axis=0) for b in bags]).astype(np.float64)
    return flat, bags, Y


def floor_seconds(
    est: AttentionMILRegressor, flat: np.ndarray, n_genes: int, *, device: str, chunk: int = 65_536
):
    """One forward + backward pass of the network's matmuls over all tiles (flat, no padding), in seconds."""
    module = est.build_network(flat.shape[1], n_genes).to(device)
    module.train()
    X = torch.from_numpy(flat)
    best = np.inf
    for _ in range(2):
        module.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for s in range(0, len(X), chunk):
            x = X[s : s + chunk].to(device, non_blocking=True)[None]
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=device)
            ctx = (
                torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else contextlib.nullcontext()
            )
            with ctx:
                bag = module(x, mask)[0]
            bag.float().sum().backward()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def epoch_seconds(bags, Y, *, device: str, epochs: int, **params) -> dict:
    est = AttentionMILRegressor(max_epochs=epochs, device=device, random_state=0, **params)
    t0 = time.perf_counter()
    est.fit(bags, Y)
    total = time.perf_counter() - t0
    secs = [h["seconds"] for h in est.history_[1:]] or [est.history_[0]["seconds"]]
    return {"epoch_s": float(np.median(secs)), "fit_s": total, "epochs": est.n_epochs_}


def run_device(flat, bags, Y, *, device: str, epochs: int) -> dict:
    ref = AttentionMILRegressor(device=device)
    floor = floor_seconds(ref, flat, Y.shape[1], device=device)
    out = {"floor_s": floor}
    all_tiles = dict(max_tiles=None, tile_fraction=1.0, pca_components=None)
    no_val = epoch_seconds(bags, Y, device=device, epochs=epochs, patience=None, **all_tiles)
    with_val = epoch_seconds(bags, Y, device=device, epochs=epochs, patience=100, **all_tiles)
    default = epoch_seconds(bags, Y, device=device, epochs=epochs, patience=None)
    out["mil_all_tiles"] = {
        "epoch_s": no_val["epoch_s"],
        "ratio_to_floor": no_val["epoch_s"] / floor,
        "epoch_with_validation_s": with_val["epoch_s"],
        "ratio_with_validation_to_floor": with_val["epoch_s"] / floor,
    }
    out["mil_default"] = {
        "epoch_s": default["epoch_s"],
        "fit_s": default["fit_s"],
        "ratio_to_floor": default["epoch_s"] / floor,
    }
    fixed = dict(max_epochs=epochs, min_epochs=epochs, device=device)
    single = epoch_seconds(bags, Y, device=device, epochs=epochs, patience=epochs, min_epochs=epochs)
    t0 = time.perf_counter()
    make_model("mil", params=fixed, random_state=0).fit(bags, Y, groups=np.arange(len(bags)))
    nested = time.perf_counter() - t0
    out["nested"] = {
        "fit_s": nested,
        "single_network_fit_s": single["fit_s"],
        "ratio": nested / single["fit_s"],
    }
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bags", type=int, default=200)
    ap.add_argument("--tiles", type=int, default=2000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--genes", type=int, default=35)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    flat, bags, Y = make_cohort(args.bags, args.tiles, args.dim, args.genes)
    result = {
        "benchmark": "train",
        "bags": args.bags,
        "tiles_per_bag": args.tiles,
        "dim": args.dim,
        "genes": args.genes,
        "feature_gb": flat.nbytes / 1e9,
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    result["cpu_figures"] = run_device(flat, bags, Y, device="cpu", epochs=args.epochs)
    t0 = time.perf_counter()
    lgbm_regressor(random_state=0).fit(bags, Y)
    result["lgbm_fit_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ridge_regressor().fit(bags, Y)
    result["ridge_fit_s"] = time.perf_counter() - t0
    if torch.cuda.is_available():
        result["gpu"] = torch.cuda.get_device_name(0)
        result["cuda_figures"] = run_device(flat, bags, Y, device="cuda", epochs=args.epochs)
    else:
        result["gpu"] = None
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
