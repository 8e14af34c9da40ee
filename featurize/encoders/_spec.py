"""The encoder spec dataclass and the registry (timm-shaped: register, look up, list)."""

from __future__ import annotations

import copy
import difflib
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

#: How the backbone output becomes one vector per tile.
OUTPUT_MODES = ("pooled", "cls", "mean_patch", "cls+mean_patch")
#: Families decide defaults: CNNs and hand-crafted encoders run ``channels_last`` on CPU.
FAMILIES = ("vit", "cnn", "handcrafted")


class UnknownEncoderError(KeyError):
    """An encoder name that is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class EncoderSpec:
    """Everything about an encoder except its weights: architecture, output, preprocessing, provenance.

    The architecture is a timm model name plus ``timm_kwargs`` (what ``timm.create_model`` receives, as the model's
    hub ``config.json`` gives it); ``pretrained_cfg`` overlays the timm pretrained config (mean, std, input size,
    interpolation, crop), from which :func:`timm.data.resolve_model_data_config` derives the preprocessing.

    Attributes
    ----------
    name
        Registry name, also the encoder folder in the store (``embeddings/<tiling>/<name>/``).
    architecture
        timm model name (optionally with a pretrained tag, e.g. ``resnet18.tv_in1k``), or a custom name for
        encoders with their own builder (``stain-texture``).
    dim
        Output dimension: ``forward`` returns ``(B, dim)``.
    output_mode
        ``pooled`` (the timm pooled pre-logits features), ``cls`` (class token), ``mean_patch`` (mean of patch
        tokens, register tokens excluded) or ``cls+mean_patch`` (their concatenation, as Virchow publishes).
    timm_kwargs
        Keyword arguments for ``timm.create_model``. Layer classes are given as dotted strings
        (``"timm.layers.SwiGLUPacked"``, ``"torch.nn.SiLU"``) so the spec stays JSON-able.
    hf_hub_id
        ``"hf-hub:<org>/<repo>"`` where the weights live on the Hugging Face hub, or None.
    weights_file
        File name looked for in ``$SLIDE2EXPR_WEIGHTS``.
    licence, gated
        The weights' licence, and whether the hub asks users to accept terms before downloading.
    params_m
        Parameters in millions (of the backbone as built here, e.g. ResNet50 without ``layer4``).
    description
        One line for ``slide2expr encoders``.
    pretrained_cfg
        Overlay for timm's pretrained config (``mean``, ``std``, ``input_size``, ``interpolation``, ``crop_pct``).
    hub_filename
        The weights file's name in the hub repository (also looked for in ``$SLIDE2EXPR_WEIGHTS/<name>/``).
    package_weights
        ``"<python package>:<path inside it>"`` for weights that ship in a Python package (works offline).
    weights_from
        Where to get the weights file when it is not on the Hugging Face hub (shown when it is missing).
    checkpoint_format
        ``timm`` (timm / torchvision key names), or the name of a converter registered with the spec.
    family
        ``vit``, ``cnn`` or ``handcrafted``.
    bf16_ok
        Whether bf16 autocast suits the encoder (False for hand-crafted statistics).
    """

    name: str
    architecture: str
    dim: int
    output_mode: str
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    hf_hub_id: str | None = None
    weights_file: str | None = None
    licence: str = "unknown"
    gated: bool = False
    params_m: float = 0.0
    description: str = ""
    pretrained_cfg: dict[str, Any] = field(default_factory=dict)
    hub_filename: str | None = None
    package_weights: str | None = None
    weights_from: str | None = None
    checkpoint_format: str = "timm"
    family: str = "vit"
    bf16_ok: bool = True

    def __post_init__(self) -> None:
        if self.output_mode not in OUTPUT_MODES:
            raise ValueError(
                f"encoder {self.name!r}: output_mode {self.output_mode!r} is not one of {', '.join(OUTPUT_MODES)}"
            )
        if self.family not in FAMILIES:
            raise ValueError(
                f"encoder {self.name!r}: family {self.family!r} is not one of {', '.join(FAMILIES)}"
            )
        if int(self.dim) <= 0:
            raise ValueError(f"encoder {self.name!r}: dim must be positive, got {self.dim}")
        if self.hf_hub_id is not None and not self.hf_hub_id.startswith("hf-hub:"):
            raise ValueError(
                f"encoder {self.name!r}: hf_hub_id must look like 'hf-hub:org/repo', got {self.hf_hub_id!r}"
            )

    @property
    def hub_repo(self) -> str | None:
        """The hub repository id (``org/repo``), or None."""
        return self.hf_hub_id.removeprefix("hf-hub:") if self.hf_hub_id else None

    @property
    def needs_weights(self) -> bool:
        """False for weight-free encoders (nothing to resolve or hash)."""
        return bool(self.weights_file or self.hf_hub_id or self.package_weights)

    def to_dict(self) -> dict[str, Any]:
        """The spec as a JSON-able dict."""
        return _jsonable(asdict(self))

    def resolved_timm_kwargs(self, *, depth: int | None = None) -> dict[str, Any]:
        """``timm_kwargs`` with dotted layer names imported, and ``depth`` applied when given."""
        kwargs = {
            k: _import_dotted(v) if k.endswith("_layer") and isinstance(v, str) else v
            for k, v in copy.deepcopy(self.timm_kwargs).items()
        }
        if depth is not None:
            kwargs["depth"] = int(depth)
        return kwargs


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    return repr(value)


def _import_dotted(path: str) -> Any:
    import importlib

    module, _, attr = path.rpartition(".")
    if not module:
        raise ValueError(f"expected a dotted name like 'timm.layers.SwiGLUPacked', got {path!r}")
    return getattr(importlib.import_module(module), attr)


#: ``builder(spec, *, depth) -> torch.nn.Module``: builds the backbone with random weights.
Builder = Callable[..., torch.nn.Module]
#: ``convert(state_dict, model) -> state_dict``: maps a checkpoint's keys onto the backbone's.
Converter = Callable[[dict[str, torch.Tensor], torch.nn.Module], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class _Entry:
    spec: EncoderSpec
    builder: Builder | None
    convert: Converter | None


_REGISTRY: dict[str, _Entry] = {}


def register_encoder(
    spec: EncoderSpec, *, builder: Builder | None = None, convert_state_dict: Converter | None = None
) -> EncoderSpec:
    """Add ``spec`` to the registry; a duplicate name warns and replaces the earlier entry.

    Parameters
    ----------
    spec
        The encoder's spec.
    builder
        ``builder(spec, *, depth)`` returning the backbone with random weights; default: ``timm.create_model``
        on ``spec.architecture`` with ``spec.timm_kwargs`` and ``spec.pretrained_cfg``.
    convert_state_dict
        ``convert(state_dict, backbone)`` mapping a checkpoint's keys onto the backbone's (for checkpoints that
        are not in timm's format); default: classifier keys the backbone lacks are dropped.

    Returns
    -------
    EncoderSpec
        ``spec``, so the call can be used as an expression.
    """
    if not isinstance(spec, EncoderSpec):
        raise TypeError(f"register_encoder expects an EncoderSpec, got {type(spec).__name__}")
    if spec.name in _REGISTRY:
        warnings.warn(
            f"encoder {spec.name!r} is already registered; the new spec replaces it",
            UserWarning,
            stacklevel=2,
        )
    _REGISTRY[spec.name] = _Entry(spec, builder, convert_state_dict)
    return spec


def unregister_encoder(name: str) -> None:
    """Remove ``name`` from the registry (for tests and plugins); unknown names raise."""
    _entry(name)
    del _REGISTRY[name]


def list_encoders() -> list[EncoderSpec]:
    """All registered specs, in registration order."""
    return [e.spec for e in _REGISTRY.values()]


def get_spec(name: str | EncoderSpec) -> EncoderSpec:
    """The spec registered as ``name``; an unknown name raises an error that lists the known ones."""
    if isinstance(name, EncoderSpec):
        return name
    return _entry(name).spec


def _entry(name: str) -> _Entry:
    try:
        return _REGISTRY[name]
    except KeyError:
        known = sorted(_REGISTRY)
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownEncoderError(
            f"unknown encoder {name!r}.{hint} Known encoders: {', '.join(known)} "
            "(run `slide2expr encoders` for details, or register one with featurize.encoders.register_encoder)"
        ) from None
