"""Checkpoint converters (a published checkpoint's keys → the backbone's) and the builders of backbones timm does
not build as they are."""

from __future__ import annotations

import re

import torch
from torch import nn

from slide2expr.featurize.encoders._spec import EncoderSpec
from slide2expr.featurize.encoders._weights import drop_classifier


def resnet_trunc_convert(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """A full torchvision/timm ResNet50 checkpoint → the truncated backbone: drop ``layer4`` and ``fc``."""
    sd = {k: v for k, v in sd.items() if not k.startswith("layer4.")}
    return drop_classifier(sd, model)


_LITE_BLOCK = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(.+)$")


def efficientnet_pytorch_convert(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """EfficientNet-PyTorch (lukemelas) key names → timm's ``tf_efficientnet_lite0``.

    Blocks are numbered flat there (``_blocks.12``) and by stage here (``blocks.5.0``); inside a block the
    expansion / depthwise / projection convs and their batch norms are renamed. Keys already in timm's format pass
    through unchanged, so a checkpoint saved from this encoder reloads.
    """
    if not any(k.startswith("_") for k in sd):
        return drop_classifier(sd, model)
    flat = [(si, bi) for si, stage in enumerate(model.blocks) for bi in range(len(stage))]
    top = {
        "_conv_stem": "conv_stem",
        "_bn0": "bn1",
        "_conv_head": "conv_head",
        "_bn1": "bn2",
        "_fc": "classifier",
    }
    expand = {
        "_expand_conv": "conv_pw",
        "_bn0": "bn1",
        "_depthwise_conv": "conv_dw",
        "_bn1": "bn2",
        "_project_conv": "conv_pwl",
        "_bn2": "bn3",
        "_se_reduce": "se.conv_reduce",
        "_se_expand": "se.conv_expand",
    }
    no_expand = {
        "_depthwise_conv": "conv_dw",
        "_bn1": "bn1",
        "_project_conv": "conv_pw",
        "_bn2": "bn2",
        "_se_reduce": "se.conv_reduce",
        "_se_expand": "se.conv_expand",
    }
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        m = _LITE_BLOCK.match(key)
        if m:
            idx, layer, rest = int(m.group(1)), m.group(2), m.group(3)
            if idx >= len(flat):
                raise KeyError(
                    f"checkpoint block {idx} does not exist in {type(model).__name__} ({len(flat)} blocks)"
                )
            si, bi = flat[idx]
            has_expand = f"_blocks.{idx}._expand_conv.weight" in sd
            table = expand if has_expand else no_expand
            out[f"blocks.{si}.{bi}.{table.get(layer, layer)}.{rest}"] = value
        else:
            head, _, rest = key.partition(".")
            out[f"{top.get(head, head)}.{rest}"] = value
    return drop_classifier(out, model)


def hf_dinov2_convert(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Hugging Face ``transformers`` Dinov2Model keys → timm ``VisionTransformer`` (Phikon-v2's checkpoint).

    Both key layouts are read: transformers 4's (``attention.attention.query`` …, ``attention.output.dense``; the
    hub file) and transformers 5's (``attention.q_proj`` … ``o_proj``). ``benchmarks/verify_phikon_v2.py`` compares
    the result with transformers' own ``Dinov2Model`` forward at ViT-L width with random weights;
    ``tests/featurize/test_encoders.py`` checks the mapping with a hand-built checkpoint.

    Query/key/value projections are concatenated into ``qkv``; layer-scale ``lambda1`` becomes ``gamma``;
    ``mask_token`` (unused at inference) is dropped; the position embedding is resampled if its grid differs.
    Keys already in timm's format pass through unchanged.
    """
    if not any(k.startswith(("embeddings.", "encoder.layer.")) for k in sd):
        return drop_classifier(sd, model)
    from timm.layers import resample_abs_pos_embed

    out: dict[str, torch.Tensor] = {}
    n_layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.layer."))
    for i in range(n_layers):
        p = f"encoder.layer.{i}."
        if f"{p}attention.q_proj.weight" in sd:  # transformers ≥ 5 names
            qkv, proj = [f"{p}attention.{n}_proj" for n in "qkv"], f"{p}attention.o_proj"
        else:  # transformers 4 names (the hub checkpoint)
            qkv = [f"{p}attention.attention.{n}" for n in ("query", "key", "value")]
            proj = f"{p}attention.output.dense"
        for kind in ("weight", "bias"):
            out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([sd[f"{n}.{kind}"] for n in qkv], dim=0)
            out[f"blocks.{i}.attn.proj.{kind}"] = sd[f"{proj}.{kind}"]
            for n in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                out[f"blocks.{i}.{n}.{kind}"] = sd[f"{p}{n}.{kind}"]
        out[f"blocks.{i}.ls1.gamma"] = sd[f"{p}layer_scale1.lambda1"]
        out[f"blocks.{i}.ls2.gamma"] = sd[f"{p}layer_scale2.lambda1"]
    out["cls_token"] = sd["embeddings.cls_token"]
    out["patch_embed.proj.weight"] = sd["embeddings.patch_embeddings.projection.weight"]
    out["patch_embed.proj.bias"] = sd["embeddings.patch_embeddings.projection.bias"]
    out["norm.weight"], out["norm.bias"] = sd["layernorm.weight"], sd["layernorm.bias"]
    pos = sd["embeddings.position_embeddings"]
    want = model.state_dict()["pos_embed"].shape
    if pos.shape != want:
        grid = model.patch_embed.grid_size
        # as transformers' Dinov2 does at run time: bicubic, no antialiasing (timm's default antialiases)
        pos = resample_abs_pos_embed(pos, new_size=list(grid), num_prefix_tokens=1, antialias=False)
    out["pos_embed"] = pos
    return out


def build_resnet50_trunc(spec: EncoderSpec, *, depth: int | None = None) -> nn.Module:
    """CLAM's ResNet50-trunc: ImageNet ResNet50 up to ``layer3`` (1024 channels), then global average pooling."""
    import timm

    model = timm.create_model(
        spec.architecture,
        pretrained=False,
        pretrained_cfg_overlay=dict(spec.pretrained_cfg),
        **spec.resolved_timm_kwargs(),
    )
    model.layer4 = nn.Identity()
    model.num_features = 1024
    return model
