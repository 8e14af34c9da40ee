"""CTransPath (Wang et al. 2022, *Medical Image Analysis* 81:102559): timm's Swin-T with a convolutional stem.

The backbone is ``swin_tiny_patch4_window7_224`` (embed dim 96, depths 2-2-6-2, heads 3-6-12-24) whose patch
embedding is replaced by :class:`ConvStem`: two 3x3 stride-2 convolutions (no bias), each followed by batch norm
and ReLU, with 12 and 24 channels (the stem receives Swin's embed dim, 96, and starts at 96 // 8, as the authors'
code does), a 1x1 convolution to 96 channels, then the Swin patch-norm LayerNorm. The classifier is removed; the
embedding is the global average of the last stage (768-d). The authors' checkpoint (``ctranspath.pth``,
``{"model": state_dict}``) was saved from timm 0.5.4, whose Swin layout differs from current timm's;
:func:`convert_ctranspath` maps it with timm's own :func:`timm.models.swin_transformer.checkpoint_filter_fn`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from slide2expr.featurize.encoders._spec import EncoderSpec
from slide2expr.featurize.encoders._weights import drop_classifier


class ConvStem(nn.Module):
    """CTransPath's patch embedding, shaped as a timm ``embed_layer`` for ``SwinTransformer``.

    Parameter names (``proj.0`` conv, ``proj.1`` batch norm, ``proj.3``, ``proj.4``, ``proj.6`` 1x1 conv, ``norm``)
    match the authors' checkpoint. Current timm asks its patch embedding for NHWC output (``output_fmt="NHWC"``);
    the original flattened to ``(B, H*W, C)`` in row-major order, which is the same tensor reshaped.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] | None = 224,
        patch_size: int | tuple[int, int] = 4,
        in_chans: int = 3,
        embed_dim: int = 96,
        norm_layer: Any = None,
        flatten: bool = True,
        output_fmt: str | None = None,
        strict_img_size: bool = True,
        device: Any = None,
        dtype: Any = None,
        **_: Any,
    ) -> None:
        super().__init__()
        from timm.layers import get_norm_layer, to_2tuple

        dd = {"device": device, "dtype": dtype}
        self.patch_size = to_2tuple(patch_size)
        if self.patch_size != (4, 4):
            raise ValueError(f"CTransPath's ConvStem has patch size 4 (two stride-2 convs), got {patch_size}")
        if embed_dim % 8:
            raise ValueError(f"ConvStem needs embed_dim divisible by 8, got {embed_dim}")
        if output_fmt not in (None, "NHWC"):
            raise ValueError(f"ConvStem output_fmt must be 'NHWC' or None (flattened), got {output_fmt!r}")
        self.flatten = flatten and output_fmt is None
        self.strict_img_size = strict_img_size
        self.set_input_size(img_size)
        c1, c2 = embed_dim // 8, embed_dim // 4
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, c1, kernel_size=3, stride=2, padding=1, bias=False, **dd),
            nn.BatchNorm2d(c1, **dd),
            nn.ReLU(inplace=True),
            nn.Conv2d(c1, c2, kernel_size=3, stride=2, padding=1, bias=False, **dd),
            nn.BatchNorm2d(c2, **dd),
            nn.ReLU(inplace=True),
            nn.Conv2d(c2, embed_dim, kernel_size=1, **dd),
        )
        if isinstance(norm_layer, str):
            norm_layer = get_norm_layer(norm_layer)
        self.norm = norm_layer(embed_dim, **dd) if norm_layer else nn.Identity()

    def set_input_size(
        self, img_size: int | tuple[int, int] | None = None, patch_size: int | tuple[int, int] | None = None
    ) -> None:
        """Change the expected input size (the patch size is fixed at 4 by the stem's two stride-2 convs)."""
        from timm.layers import to_2tuple

        if patch_size is not None and to_2tuple(patch_size) != self.patch_size:
            raise ValueError("CTransPath's ConvStem cannot change its patch size")
        if img_size is None:
            img_size = getattr(self, "img_size", None)
        if img_size is None:
            self.img_size = self.grid_size = self.num_patches = None
            return
        self.img_size = to_2tuple(img_size)
        self.grid_size = (self.img_size[0] // 4, self.img_size[1] // 4)
        self.num_patches = self.grid_size[0] * self.grid_size[1]

    def feat_ratio(self, as_scalar: bool = True) -> int | tuple[int, int]:
        return max(self.patch_size) if as_scalar else self.patch_size

    def dynamic_feat_size(self, img_size: tuple[int, int]) -> tuple[int, int]:
        return img_size[0] // 4, img_size[1] // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        if self.img_size is not None and self.strict_img_size and (h, w) != self.img_size:
            raise ValueError(f"CTransPath expects {self.img_size[0]}x{self.img_size[1]} input, got {h}x{w}")
        if h % 4 or w % 4:
            raise ValueError(f"CTransPath input sides must be multiples of 4, got {h}x{w}")
        x = self.proj(x).permute(0, 2, 3, 1)  # NHWC, what current timm's Swin takes
        if self.flatten:
            x = x.flatten(1, 2)  # (B, H*W, C), the original's layout
        return self.norm(x)


def build_ctranspath(spec: EncoderSpec, *, depth: int | None = None) -> nn.Module:
    """``timm.create_model("swin_tiny_patch4_window7_224", embed_layer=ConvStem, num_classes=0)``, random weights."""
    import timm

    if depth is not None:
        raise ValueError(
            f"encoder {spec.name!r}: depth= is not supported (Swin has per-stage depths; the full model is small)"
        )
    return timm.create_model(
        spec.architecture,
        pretrained=False,
        pretrained_cfg_overlay=dict(spec.pretrained_cfg),
        **spec.resolved_timm_kwargs(),
    )


def convert_ctranspath(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The authors' timm-0.5.4 Swin checkpoint → current timm's ``SwinTransformer`` with :class:`ConvStem`.

    Reuses timm's :func:`~timm.models.swin_transformer.checkpoint_filter_fn`, which recognises the old layout by
    ``layers.0.downsample.*`` and moves each stage's trailing patch merging (``layers.N.downsample``) to the start
    of the next stage (``layers.N+1.downsample``), drops the ``relative_position_index`` / ``attn_mask`` buffers
    that current timm rebuilds rather than stores, and renames ``head.`` to ``head.fc.``; classifier keys are then
    dropped. A checkpoint already in the current layout (one saved from this encoder) passes through unchanged.
    The ConvStem keys (``patch_embed.proj.0.weight`` …) are not touched: timm's resampling of a plain
    ``patch_embed.proj.weight`` does not apply to them.

    Tested against a synthetic checkpoint written in the old layout (key names and shapes from timm 0.5.4's Swin,
    random values), not against the real ``ctranspath.pth``, which cannot be downloaded here. A one-off check outside
    the test suite built the model with timm 0.5.4 itself (its Swin-T with this stem swapped in, random weights):
    its state dict had the synthetic checkpoint's keys and shapes, and loaded here it gave the same embeddings
    (max difference 7e-7).
    """
    from timm.models.swin_transformer import checkpoint_filter_fn

    return drop_classifier(checkpoint_filter_fn(sd, model), model)
