"""Check the Phikon-v2 key conversion against transformers' own ``Dinov2Model`` (random weights, no download).

Phikon-v2's hub checkpoint is a transformers ``Dinov2Model``; slide2expr loads it into timm's ViT-L/16 through
``slide2expr.featurize.encoders._convert.hf_dinov2_convert``. This script builds a ``Dinov2Model`` at Phikon-v2's width
(1024, 16 heads, patch 16, layer scale) with random weights at reduced depth, saves it in both key layouts
(transformers 4's, which the hub file uses, and transformers 5's), loads each through ``create_encoder("phikon-v2",
weights=…)`` and compares the CLS embedding with transformers' ``pooler_output`` on the same normalised tiles. A
second grid size (``--image-size 518``) checks the position-embedding resampling. A swapped query/key checkpoint
must differ, so the comparison can fail.

transformers is not a dependency of slide2expr; install it beside the venv, e.g.
``pip install --target /tmp/tf --no-deps transformers regex tokenizers`` and run
``python benchmarks/verify_phikon_v2.py --path /tmp/tf``. Prints JSON; exits 1 on a mismatch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_V5_TO_V4 = (
    ("attention.q_proj", "attention.attention.query"),
    ("attention.k_proj", "attention.attention.key"),
    ("attention.v_proj", "attention.attention.value"),
    ("attention.o_proj", "attention.output.dense"),
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=2, help="transformer blocks (Phikon-v2 has 24)")
    ap.add_argument("--image-size", type=int, nargs="+", default=[224, 518], help="checkpoint grid(s), px")
    ap.add_argument("--path", default=None, help="extra sys.path entry holding transformers")
    args = ap.parse_args(argv)
    if args.path:
        sys.path.append(args.path)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from safetensors.torch import save_file

    try:
        from transformers import Dinov2Config, Dinov2Model
    except ImportError as e:
        raise SystemExit(f"transformers is needed for this check ({e}); see the module docstring") from None
    import transformers

    from slide2expr.featurize.encoders import create_encoder

    results, ok = [], True
    for img in args.image_size:
        torch.manual_seed(0)
        cfg = Dinov2Config(
            hidden_size=1024, num_hidden_layers=args.depth, num_attention_heads=16, intermediate_size=4096,
            mlp_ratio=4, image_size=img, patch_size=16, layerscale_value=1e-5, layer_norm_eps=1e-6,
            use_swiglu_ffn=False, hidden_act="gelu", qkv_bias=True,
        )  # fmt: skip
        hf = Dinov2Model(cfg).eval()
        with torch.no_grad():  # make every parameter matter
            for name, p in hf.named_parameters():
                if "lambda1" in name:
                    p.copy_(torch.rand_like(p) * 0.5 + 0.1)
                elif "position_embeddings" in name or "cls_token" in name:
                    p.copy_(torch.randn_like(p) * 0.1)
                elif name.endswith("bias"):
                    p.copy_(torch.randn_like(p) * 0.02)
        native = {k: v.contiguous() for k, v in hf.state_dict().items()}
        v4 = {}
        for k, v in native.items():
            for a, b in _V5_TO_V4:
                k = k.replace(a, b)
            v4[k] = v
        swapped = dict(v4)
        for i in range(args.depth):
            q, k = (f"encoder.layer.{i}.attention.attention.{n}.weight" for n in ("query", "key"))
            swapped[q], swapped[k] = v4[k], v4[q]
        x = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8)
        with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
            ref = None
            for layout, sd in (("native", native), ("transformers4", v4), ("q_k_swapped", swapped)):
                path = Path(tmp) / layout / "phikon-v2.safetensors"
                path.parent.mkdir()
                save_file(sd, str(path))
                enc = create_encoder("phikon-v2", weights=path, depth=args.depth)
                ours = enc(x).float()
                if ref is None:
                    ref = hf(pixel_values=enc.normalise(x).float()).pooler_output
                diff = float((ours - ref).abs().max())
                good = diff > 1e-2 if layout == "q_k_swapped" else diff < 1e-4
                ok &= good
                results.append(
                    {"image_size": img, "layout": layout, "max_abs_diff": diff, "as_expected": good}
                )
    print(
        json.dumps(
            {"transformers": transformers.__version__, "depth": args.depth, "results": results}, indent=2
        )
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
