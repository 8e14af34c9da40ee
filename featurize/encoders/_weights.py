"""Where an encoder's weights come from, their sha256, and loading a checkpoint file into a backbone."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from slide2expr.featurize.encoders._spec import EncoderSpec

#: Environment variable naming the directory of local weights files.
WEIGHTS_ENV = "SLIDE2EXPR_WEIGHTS"
#: Environment variable overriding the cache directory (sha256 cache).
CACHE_ENV = "SLIDE2EXPR_CACHE_DIR"

_STATE_DICT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


class WeightsNotFoundError(FileNotFoundError):
    """No weights for an encoder could be found here (offline, or the hub refused)."""


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else 'no details'}"


class WeightsMismatchError(ValueError):
    """A weights file does not fit the encoder's architecture."""


@dataclass(frozen=True)
class WeightsSource:
    """A resolved weights file: ``path`` and where it was found (``argument``, ``env``, ``package``,
    ``hf-cache`` or ``hub``)."""

    path: Path
    origin: str


def weights_dir() -> Path | None:
    """``$SLIDE2EXPR_WEIGHTS`` as a Path, or None when unset."""
    value = os.environ.get(WEIGHTS_ENV, "").strip()
    return Path(value).expanduser() if value else None


def hub_offline() -> bool:
    """True when the Hugging Face hub must not be contacted (``HF_HUB_OFFLINE`` set)."""
    value = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _local_candidates(spec: EncoderSpec) -> list[tuple[Path, str]]:
    out: list[tuple[Path, str]] = []
    root = weights_dir()
    if root is not None:
        if spec.weights_file:
            out.append((root / spec.weights_file, "env"))
        if spec.hub_filename:
            out.append((root / spec.name / spec.hub_filename, "env"))
    if spec.package_weights:
        pkg, _, rel = spec.package_weights.partition(":")
        try:
            from importlib.resources import files

            out.append((Path(str(files(pkg).joinpath(rel))), "package"))
        except ModuleNotFoundError:
            pass
    if spec.hub_repo and spec.hub_filename:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(spec.hub_repo, spec.hub_filename)
        if isinstance(cached, str):
            out.append((Path(cached), "hf-cache"))
    return out


def weights_available(spec: EncoderSpec | str) -> str | None:
    """Where ``spec``'s weights would be found on this machine without downloading, or None.

    Looks in ``$SLIDE2EXPR_WEIGHTS/<weights_file>``, ``$SLIDE2EXPR_WEIGHTS/<name>/<hub_filename>``, the Python
    package that ships them, and the Hugging Face cache. Weight-free encoders return ``"(none needed)"``.
    """
    from slide2expr.featurize.encoders._spec import get_spec

    spec = get_spec(spec)
    if not spec.needs_weights:
        return "(none needed)"
    found = find_local_weights(spec)
    return str(found.path) if found is not None else None


def find_local_weights(spec: EncoderSpec) -> WeightsSource | None:
    """The first local weights file of ``spec`` (env dir, package, HF cache) with its origin, or None."""
    for path, origin in _local_candidates(spec):
        if path.is_file():
            return WeightsSource(path.resolve(), origin)
    return None


def missing_message(spec: EncoderSpec) -> str:
    """The one message that says which file to put where."""
    root = weights_dir()
    where = f"{root}/" if root is not None else f"${WEIGHTS_ENV}/ (a folder you name in that variable) as "
    lines = [f"no weights for encoder {spec.name!r} here."]
    if spec.weights_file:
        lines.append(
            f"Put the weights file at {where}{spec.weights_file}"
            + (f" (the hub's {spec.hub_filename} from {spec.hub_repo}, renamed)" if spec.hub_repo else "")
            + f", or pass it with --weights PATH (Python: create_encoder({spec.name!r}, weights=PATH))."
        )
    if spec.weights_from:
        lines.append(f"Get it from {spec.weights_from}.")
    if spec.hub_repo:
        lines.append(f"Download it from https://huggingface.co/{spec.hub_repo} ({spec.hub_filename}).")
        if spec.gated:
            lines.append(
                f"{spec.hub_repo} is gated: accept its licence ({spec.licence}) on the hub with your account and "
                "log in (`hf auth login`) before downloading; UNI and Virchow weights are gated like this."
            )
        if hub_offline():
            lines.append("HF_HUB_OFFLINE is set, so the hub was not contacted.")
    lines.append("For tests without weights use create_encoder(..., pretrained=False) (random weights).")
    return " ".join(lines)


def locate_weights(spec: EncoderSpec, *, weights: str | os.PathLike | None = None) -> WeightsSource | None:
    """Where ``spec``'s weights come from, without downloading anything: ``weights`` (which must exist), else the
    first local file (:func:`find_local_weights`), else None when the Hugging Face hub would be asked (online).

    Raises
    ------
    WeightsNotFoundError
        When ``weights`` does not exist, or nothing local is found and the hub cannot be used (the message says
        which file to put where).
    """
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(
                f"weights file {str(path)!r} given for encoder {spec.name!r} does not exist or is not a file"
            )
        check_weights_suffix(path)
        return WeightsSource(path.resolve(), "argument")
    found = find_local_weights(spec)
    if found is not None:
        return found
    if spec.hub_repo and spec.hub_filename and not hub_offline():
        return None
    raise WeightsNotFoundError(missing_message(spec))


def resolve_weights(spec: EncoderSpec, *, weights: str | os.PathLike | None = None) -> WeightsSource:
    """Find ``spec``'s weights: ``weights`` → ``$SLIDE2EXPR_WEIGHTS`` → package → HF cache → hub (when online).

    Raises
    ------
    WeightsNotFoundError
        When nothing is found (the message says which file to put where), or ``weights`` does not exist.
    """
    found = locate_weights(spec, weights=weights)
    if found is not None:
        return found
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError

    try:
        return WeightsSource(Path(hf_hub_download(spec.hub_repo, spec.hub_filename)), "hub")
    except GatedRepoError as exc:
        raise WeightsNotFoundError(f"{missing_message(spec)} (hub said: access is gated)") from exc
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as exc:
        raise WeightsNotFoundError(f"{missing_message(spec)} (hub download failed: {exc})") from exc


# ---- sha256, cached by (path, size, mtime) --------------------------------------------------------------------

_SHA_LOCK = threading.Lock()
_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def cache_dir() -> Path:
    """``$SLIDE2EXPR_CACHE_DIR``, else ``$XDG_CACHE_HOME/slide2expr``, else ``~/.cache/slide2expr``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or (Path.home() / ".cache")
    return Path(base) / "slide2expr"


def _sha_cache_file() -> Path:
    return cache_dir() / "weights_sha256.json"


def _read_sha_cache() -> dict[str, str]:
    try:
        data = json.loads(_sha_cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 hex digest of a file, remembered by (absolute path, size, mtime) in memory and on disk.

    The on-disk cache is ``<cache_dir>/weights_sha256.json``; a weights file of several GB is hashed once per
    machine, not once per slide or run.
    """
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    skey = f"{key[0]}|{key[1]}|{key[2]}"
    with _SHA_LOCK:
        if key in _SHA_MEMO:
            return _SHA_MEMO[key]
        disk = _read_sha_cache()
        if skey in disk:
            _SHA_MEMO[key] = disk[skey]
            return disk[skey]
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    value = digest.hexdigest()
    with _SHA_LOCK:
        _SHA_MEMO[key] = value
        disk = _read_sha_cache()
        disk[skey] = value
        try:
            from slide2expr.contract import write_bytes_atomic

            write_bytes_atomic(_sha_cache_file(), json.dumps(disk, indent=1, sort_keys=True).encode())
        except OSError:
            pass  # a read-only cache directory only costs a re-hash next time
    return value


# ---- loading --------------------------------------------------------------------------------------------------

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module", "teacher")
_PREFIXES = ("module.", "backbone.", "model.", "dinov2.")


def check_weights_suffix(path: str | os.PathLike) -> Path:
    """``path`` as a Path when its suffix names a state-dict format :func:`read_state_dict` reads; else a
    :class:`WeightsMismatchError` (a run's plan checks it before anything is written).

    >>> check_weights_suffix("uni.bin").name
    'uni.bin'
    """
    path = Path(path)
    if path.suffix not in _STATE_DICT_SUFFIXES:
        raise WeightsMismatchError(
            f"weights file {str(path)!r}: unsupported suffix {path.suffix!r}; use one of {', '.join(_STATE_DICT_SUFFIXES)}"
        )
    return path


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` or ``.pth``/``.pt``/``.bin``/``.ckpt`` state dict onto the CPU.

    Checkpoints that wrap the state dict (``{"state_dict": …}``, ``{"model": …}``) are unwrapped; pickled files
    are read with ``weights_only=True`` (no code runs).
    """
    path = check_weights_suffix(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            sd = load_file(str(path), device="cpu")
        except Exception as exc:  # SafetensorError, OSError
            raise WeightsMismatchError(
                f"weights file {str(path)!r} is not a readable safetensors file "
                f"({_first_line(exc)}); is it complete? download it again"
            ) from exc
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises pickle/zip errors of several types
            raise WeightsMismatchError(
                f"weights file {str(path)!r} could not be read as a state dict "
                f"({_first_line(exc)}); is it complete? download it again"
            ) from exc
        for key in _WRAPPER_KEYS:
            if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
                sd = sd[key]
                break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsMismatchError(f"weights file {str(path)!r} does not hold a state dict of tensors")
    return dict(sd)


def strip_prefixes(sd: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes (``module.``, ``backbone.``, ``model.``, ``dinov2.``) that the model lacks."""
    own = set(model.state_dict())
    changed = True
    while changed and sd and not (set(sd) & own):
        changed = False
        for prefix in _PREFIXES:
            if all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix) :]: v for k, v in sd.items()}
                changed = True
                break
    return sd


def drop_classifier(sd: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Drop classifier keys (``fc.``, ``head.``, ``classifier.`` …) that the headless backbone does not have."""
    own = set(model.state_dict())
    heads = {"fc", "head", "classifier", "head_dist", "last_linear"}
    cfg_head = getattr(model, "pretrained_cfg", {}).get("classifier")
    if isinstance(cfg_head, str):
        heads.add(cfg_head)
    elif isinstance(cfg_head, (list, tuple)):
        heads.update(cfg_head)
    return {k: v for k, v in sd.items() if k in own or k.split(".")[0] not in heads}


def load_into(model: torch.nn.Module, sd: dict[str, torch.Tensor], *, encoder: str, path: Path) -> None:
    """Strictly load ``sd`` into ``model``; on any missing, unexpected or mis-shaped key raise one clear error."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:

        def few(items: list[str]) -> str:
            return ", ".join(items[:5]) + (f" … (+{len(items) - 5})" if len(items) > 5 else "")

        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({few(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({few(unexpected)})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches ({few(shapes)})")
        raise WeightsMismatchError(
            f"weights file {str(path)!r} does not fit encoder {encoder!r}: {'; '.join(parts)}. "
            "Check that the file is this encoder's checkpoint (and that depth= matches how it was saved)."
        )
    model.load_state_dict(sd, strict=True)
