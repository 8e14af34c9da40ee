"""The :class:`Encoder` module (uint8 in, normalised on the device, one vector per tile out) and its factory."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from slide2expr.featurize.encoders._compiled import CompiledEncoder, compiled_form, ready_form
from slide2expr.featurize.encoders._spec import EncoderSpec, _entry, _jsonable
from slide2expr.featurize.encoders._weights import (
    drop_classifier,
    file_sha256,
    load_into,
    read_state_dict,
    resolve_weights,
    strip_prefixes,
)


def timm_builder(spec: EncoderSpec, *, depth: int | None = None) -> nn.Module:
    """Build ``spec``'s backbone with random weights via ``timm.create_model`` (the default builder)."""
    import timm

    kwargs = spec.resolved_timm_kwargs(depth=depth)
    return timm.create_model(
        spec.architecture, pretrained=False, pretrained_cfg_overlay=dict(spec.pretrained_cfg), **kwargs
    )


def bf16_supported(device: str | torch.device) -> bool:
    """Whether bf16 autocast runs natively on ``device`` (CUDA with bf16, or a CPU with AVX512-BF16/AMX)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


class Encoder(nn.Module):
    """A frozen tile encoder: ``(B, 3, H, W)`` uint8 RGB in, ``(B, dim)`` float32 out.

    The input is converted to float, scaled by 1/255 and normalised with the data config's mean/std on the
    input's device (so tiles travel as uint8), then the backbone runs and ``spec.output_mode`` turns its output
    into one vector per tile.

    Attributes
    ----------
    spec, backbone
        The :class:`EncoderSpec`, and the network (a timm model, or the hand-crafted module).
    data_config
        From :func:`timm.data.resolve_model_data_config`: ``input_size`` ``(3, H, W)``, ``mean``, ``std``,
        ``interpolation``, ``crop_pct``, ``crop_mode``.
    weights_sha256, weights_source, weights_path
        sha256 of the weights file (None: random or weight-free), where it was found (``random``, ``none``,
        ``argument``, ``env``, ``package``, ``hf-cache``, ``hub``) and the file (or None).
    depth
        The reduced depth the backbone was built with, or None for the full architecture.
    channels_last
        Whether inputs are converted to ``channels_last`` before the backbone (set by :meth:`to_device`).
    """

    def __init__(
        self,
        spec: EncoderSpec,
        backbone: nn.Module,
        *,
        data_config: dict[str, Any],
        weights_sha256: str | None = None,
        weights_source: str = "random",
        weights_path: str | None = None,
        depth: int | None = None,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = backbone
        self.data_config = dict(data_config)
        self.weights_sha256 = weights_sha256
        self.weights_source = weights_source
        self.weights_path = weights_path
        self.depth = depth
        self.channels_last = False
        mean = torch.tensor(self.data_config["mean"], dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.data_config["std"], dtype=torch.float32).view(1, 3, 1, 1)
        # x * scale - shift == (x / 255 - mean) / std, one fused pass on the device
        self.register_buffer("_scale", 1.0 / (255.0 * std), persistent=False)
        self.register_buffer("_shift", mean / std, persistent=False)
        self.eval()
        self.requires_grad_(False)

    @property
    def dim(self) -> int:
        return int(self.spec.dim)

    @property
    def input_size(self) -> tuple[int, int]:
        """``(H, W)`` the encoder expects tiles resized to."""
        _, h, w = self.data_config["input_size"]
        return int(h), int(w)

    @property
    def device(self) -> torch.device:
        return self._scale.device

    def autocast_dtype(self, device: str | torch.device | None = None) -> torch.dtype | None:
        """``torch.bfloat16`` when bf16 autocast suits this encoder on ``device`` (default: its own), else None."""
        device = torch.device(device) if device is not None else self.device
        return torch.bfloat16 if self.spec.bf16_ok and bf16_supported(device) else None

    def to_device(self, device: str | torch.device = "cpu", *, channels_last: bool | None = None) -> Encoder:
        """Move to ``device`` and choose the memory format (default: ``channels_last`` for CNNs, ViTs on CUDA)."""
        device = torch.device(device)
        if channels_last is None:
            channels_last = self.spec.family == "cnn" or (
                device.type == "cuda" and self.spec.family != "handcrafted"
            )
        self.channels_last = bool(channels_last)
        self.to(device)
        if self.channels_last:
            self.to(memory_format=torch.channels_last)
        return self

    def normalise(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W)`` uint8 → float32 normalised with the data config's mean/std, on ``x``'s device."""
        _check_tiles(self.spec.name, x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return torch.addcmul(-self._shift, x.float(), self._scale)

    def forward(self, x: Tensor) -> Tensor:
        """Embed a batch of tiles: ``(B, 3, H, W)`` uint8 RGB on the encoder's device → ``(B, dim)`` float32."""
        out = _one_vector_per_tile(self.backbone, self.normalise(x), self.spec.output_mode)
        if out.ndim != 2 or out.shape[1] != self.spec.dim:
            raise RuntimeError(
                f"encoder {self.spec.name!r} produced shape {tuple(out.shape)}, its spec says (B, {self.spec.dim})"
            )
        return out.float()

    def embed(self, tiles: Tensor | np.ndarray, *, batch_size: int = 8, autocast: bool = True) -> np.ndarray:
        """Embed many tiles in batches, a convenience for notebooks, tests and benchmarks (see :func:`embed_tiles`)."""
        return embed_tiles(self, tiles, batch_size=batch_size, autocast=autocast)

    def preprocessing(self) -> dict[str, Any]:
        """The preprocessing as JSON: what a tile goes through before the backbone."""
        cfg = _jsonable(self.data_config)
        cfg.update({"scale": "1/255", "channel_order": "RGB", "dtype_in": "uint8", "normalised_on": "device"})
        return cfg

    def metadata(self) -> dict[str, Any]:
        """JSON-able description for the store's Parquet metadata (``encoder_spec`` key)."""
        return encoder_metadata(self)

    def compiled(self, batch_size: int, *, fallback: bool = False) -> CompiledEncoder:
        """This encoder compiled with ``torch.compile`` for batches of ``batch_size`` (see :func:`compiled_form`)."""
        return compiled_form(self, batch_size, fallback=fallback)

    def compiled_ready(self, batch_size: int, *, fallback: bool = False) -> CompiledEncoder | None:
        """The compiled form for ``batch_size`` an earlier call compiled, else None (see :func:`ready_form`)."""
        return ready_form(self, batch_size, fallback=fallback)

    def extra_repr(self) -> str:
        return f"name={self.spec.name!r}, dim={self.spec.dim}, output_mode={self.spec.output_mode!r}"


def _check_tiles(name: str, x: Tensor) -> None:
    """Refuse what is not a ``(B, 3, H, W)`` uint8 batch, saying what it is."""
    if x.dtype != torch.uint8:
        raise TypeError(f"encoder {name!r} expects uint8 tiles (B, 3, H, W) with values 0-255, got {x.dtype}")
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(
            f"encoder {name!r} expects tiles shaped (B, 3, H, W), got {tuple(x.shape)}; "
            "convert NHWC arrays with x.permute(0, 3, 1, 2)"
        )


def _one_vector_per_tile(backbone: nn.Module, z: Tensor, mode: str) -> Tensor:
    """The backbone's output for normalised tiles ``z`` as one vector per tile, by output ``mode``."""
    if mode == "pooled":
        return backbone(z)
    tokens = backbone.forward_features(z)
    n_prefix = int(getattr(backbone, "num_prefix_tokens", 1))
    if mode == "cls":
        return tokens[:, 0]
    if mode == "mean_patch":
        return tokens[:, n_prefix:].mean(dim=1)
    return torch.cat([tokens[:, 0], tokens[:, n_prefix:].mean(dim=1)], dim=-1)  # cls+mean_patch


@torch.inference_mode()
def embed_tiles(
    enc: Encoder, tiles: Tensor | np.ndarray, *, batch_size: int = 8, autocast: bool = True
) -> np.ndarray:
    """Embed many tiles in batches.

    Parameters
    ----------
    enc
        The encoder.
    tiles
        ``(N, 3, H, W)`` uint8 tensor, or ``(N, H, W, 3)`` uint8 numpy array.
    batch_size
        Tiles per forward pass.
    autocast
        Use bf16 autocast where :meth:`Encoder.autocast_dtype` allows it.

    Returns
    -------
    numpy.ndarray
        ``(N, dim)`` float32.
    """
    if isinstance(tiles, np.ndarray):
        if tiles.ndim != 4 or tiles.shape[-1] != 3:
            raise ValueError(f"expected an (N, H, W, 3) uint8 array, got shape {tiles.shape}")
        tiles = torch.from_numpy(np.ascontiguousarray(tiles)).permute(0, 3, 1, 2)
    dtype = enc.autocast_dtype() if autocast else None
    ctx = torch.autocast(enc.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    out = np.empty((tiles.shape[0], enc.dim), dtype=np.float32)
    with ctx:
        for start in range(0, tiles.shape[0], batch_size):
            batch = tiles[start : start + batch_size].to(enc.device, non_blocking=True)
            out[start : start + batch.shape[0]] = enc(batch).cpu().numpy()
    return out


def encoder_metadata(enc: Encoder) -> dict[str, Any]:
    """:meth:`Encoder.metadata`: the JSON-able description the store records."""
    import timm

    return {
        "name": enc.spec.name,
        "architecture": enc.spec.architecture,
        "dim": enc.spec.dim,
        "output_mode": enc.spec.output_mode,
        "preprocessing": enc.preprocessing(),
        "weights_sha256": enc.weights_sha256,
        "weights_source": enc.weights_source,
        "weights_file": Path(enc.weights_path).name if enc.weights_path else None,
        "hf_hub_id": enc.spec.hf_hub_id,
        "licence": enc.spec.licence,
        "timm_kwargs": _jsonable(enc.spec.timm_kwargs),
        "depth": enc.depth,
        "params_m": round(sum(p.numel() for p in enc.backbone.parameters()) / 1e6, 3),
        "timm_version": timm.__version__,
        "torch_version": torch.__version__,
    }


def build_backbone(name: str | EncoderSpec, *, depth: int | None = None) -> nn.Module:
    """Build the backbone of ``name`` with random weights (use ``with torch.device("meta"):`` for giant ones)."""
    spec = name if isinstance(name, EncoderSpec) else _entry(name).spec
    entry = _entry(spec.name) if not isinstance(name, EncoderSpec) else None
    builder = entry.builder if entry is not None and entry.builder is not None else timm_builder
    if depth is not None and spec.family != "vit":
        raise ValueError(
            f"encoder {spec.name!r}: depth= applies to transformer encoders only ({spec.family})"
        )
    if depth is not None and int(depth) < 1:
        raise ValueError(f"encoder {spec.name!r}: depth must be >= 1, got {depth}")
    return builder(spec, depth=depth)


def create_encoder(
    name: str,
    *,
    weights: str | os.PathLike | None = None,
    pretrained: bool = True,
    device: str | torch.device = "cpu",
    depth: int | None = None,
    channels_last: bool | None = None,
) -> Encoder:
    """Build a registered encoder, load its weights, and move it to ``device`` in eval mode.

    Parameters
    ----------
    name
        Registry name (see :func:`list_encoders`).
    weights
        A local weights file (``.safetensors``, ``.pth``, ``.pt``, ``.bin``); default: ``$SLIDE2EXPR_WEIGHTS/
        <weights_file>``, the package that ships them, the Hugging Face cache, then the hub when online.
    pretrained
        False builds random weights (tests, benchmarks); ``weights`` must then be None.
    device
        Where the encoder runs; inputs must be uint8 tensors on this device.
    depth
        Build a transformer with only ``depth`` blocks (tests of giant architectures).
    channels_last
        Memory format; default ``channels_last`` for CNNs, and for ViTs on CUDA.

    Returns
    -------
    Encoder
        Frozen (``eval``, no grad), with ``weights_sha256`` recorded.

    Raises
    ------
    UnknownEncoderError
        ``name`` is not registered (the message lists the known names).
    WeightsNotFoundError
        No weights here and the hub cannot be used (the message says which file to put where).
    WeightsMismatchError
        The weights file does not fit the architecture.
    """
    entry = _entry(name)
    spec = entry.spec
    if not pretrained and weights is not None:
        raise ValueError(f"encoder {name!r}: pass either weights=... or pretrained=False, not both")
    if weights is not None and not spec.needs_weights:
        raise ValueError(f"encoder {name!r} is weight-free; do not pass weights= (got {str(weights)!r})")
    # resolve first: a missing file fails fast, before a giant architecture is built
    src = (
        resolve_weights(spec, weights=weights)
        if (pretrained and spec.needs_weights) or weights is not None
        else None
    )
    backbone = build_backbone(name, depth=depth)
    backbone.eval()
    sha = None
    source = "random" if spec.needs_weights else "none"
    path_str = None
    if src is not None:
        sd = strip_prefixes(read_state_dict(src.path), backbone)
        sd = entry.convert(sd, backbone) if entry.convert is not None else drop_classifier(sd, backbone)
        load_into(backbone, sd, encoder=name, path=src.path)
        sha = file_sha256(src.path)
        source = src.origin
        path_str = str(src.path)
    import timm.data

    data_config = timm.data.resolve_model_data_config(backbone)
    enc = Encoder(
        spec,
        backbone,
        data_config=data_config,
        weights_sha256=sha,
        weights_source=source,
        weights_path=path_str,
        depth=depth,
    )
    return enc.to_device(device, channels_last=channels_last)
