"""Weights from local files only: safetensors, or torch pickles read with weights_only=True.

The official release ships `.pth` pickles and loads them with `weights_only=False`, which executes
whatever the file contains. Here a pickle may hold tensors (and plain containers) only; anything
else is refused. Loading into a module is strict: every key present, none extra, every shape equal,
reported on one line.
"""

from __future__ import annotations

import logging
import pickle
import re
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import Tensor, nn

from foley_dist.errors import FoleyError

PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
# Training checkpoints often nest the weights under one of these keys.
NESTED_KEYS = ("state_dict", "model", "module", "model_state_dict")
SHOWN = 5  # how many names an error message lists per category

log = logging.getLogger(__name__)


def _wanted(key: str, prefixes: Sequence[str] | None) -> bool:
    return prefixes is None or key.startswith(tuple(prefixes))


def _names(items: Sequence[str]) -> str:
    more = f", ... (+{len(items) - SHOWN} more)" if len(items) > SHOWN else ""
    return ", ".join(items[:SHOWN]) + more


def load_state_dict(path: str | Path, device: str | torch.device = "cpu",
                    prefixes: Sequence[str] | None = None) -> dict[str, Tensor]:
    """Tensors of a local checkpoint, optionally only the keys starting with one of `prefixes`.

    safetensors files are read lazily (only the selected tensors); zip pickles are memory-mapped on
    the host and only the selected tensors move to `device` (a fusion rank never holds the whole DiT).
    On the CPU both stay mapped from the file until a tensor is read or copied.
    """
    path = Path(path)
    if not path.is_file():
        raise FoleyError(f"checkpoint {path} not found (weights are read from local files only)")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return _load_safetensors(path, str(device), prefixes)
    if suffix in PICKLE_SUFFIXES:
        state = _state_dict_of(_load_pickle(path, "cpu"), path)
        return {k: v.to(device) for k, v in state.items() if _wanted(k, prefixes)}
    raise FoleyError(f"checkpoint {path}: unknown format {suffix!r} "
                     f"(expected .safetensors or one of {PICKLE_SUFFIXES})")


def stored_kwargs(path: str | Path) -> dict | None:
    """The constructor arguments an audiotools checkpoint stores beside its weights
    ({"state_dict", "metadata": {"kwargs"}}, e.g. the release's vae_128d_48k.pth), or None."""
    obj = _load_pickle(Path(path), "cpu")
    meta = obj.get("metadata") if isinstance(obj, Mapping) else None
    kwargs = meta.get("kwargs") if isinstance(meta, Mapping) else None
    return dict(kwargs) if isinstance(kwargs, Mapping) else None


def _load_safetensors(path: Path, device: str, prefixes: Sequence[str] | None) -> dict[str, Tensor]:
    try:
        if prefixes is None:
            return load_file(path, device=device)
        with safe_open(path, framework="pt", device=device) as f:
            return {k: f.get_tensor(k) for k in f.keys() if _wanted(k, prefixes)}
    except (SafetensorError, OSError) as exc:
        raise FoleyError(f"cannot read safetensors checkpoint {path}: {exc}") from exc


def _load_pickle(path: Path, device: str | torch.device) -> object:
    try:
        return torch.load(path, map_location=device, weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        what = f"a pickled {found.group(1)} object" if found else "data that is not a plain tensor pickle"
        raise FoleyError(
            f"refusing to load {path}: it contains {what}; checkpoints are read with weights_only=True "
            "and never unpickle arbitrary objects: re-save it as a dict of tensors (or safetensors) where it is trusted"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FoleyError(f"cannot read checkpoint {path}: {reason}") from exc


def _state_dict_of(obj: object, path: Path) -> dict[str, Tensor]:
    """The flat name -> tensor dict of a loaded pickle, looking one level into NESTED_KEYS."""
    if isinstance(obj, Mapping) and not all(isinstance(v, Tensor) for v in obj.values()):
        nested = [k for k in NESTED_KEYS if isinstance(obj.get(k), Mapping)]
        if nested:
            obj = obj[nested[0]]
    if not isinstance(obj, Mapping) or not obj:
        raise FoleyError(f"checkpoint {path} holds no state dict (a non-empty name -> tensor mapping, "
                         f"possibly under one of {NESTED_KEYS})")
    bad = [str(k) for k, v in obj.items() if not isinstance(v, Tensor) or not isinstance(k, str)]
    if bad:
        raise FoleyError(f"checkpoint {path} is not a state dict of tensors: non-tensor entries {_names(bad)}")
    return dict(obj)


def load_into(module: nn.Module, state_dict: Mapping[str, Tensor], what: str = "DiT",
              prefixes: Sequence[str] | None = None, source: str | Path | None = None,
              dtype: torch.dtype | None = None, device: str | torch.device | None = None) -> None:
    """Load `state_dict` into `module`, strictly; with `prefixes`, only that part of the module.

    Parameters on the meta device are materialised from the given tensors one at a time, straight
    in their final form: on `device` (default: where the tensor is), floating-point ones in `dtype`
    (default: the parameter's). Nothing else is allocated: a bf16 checkpoint loaded as bf16 never
    exists in fp32, and a tensor already in its final form is taken as it is (no copy). Other
    parameters are copied in place and keep their dtype and device.
    """
    own = {k: v for k, v in module.state_dict(keep_vars=True).items() if _wanted(k, prefixes)}
    missing = sorted(k for k in own if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in own)
    wrong = [f"{k} file {list(state_dict[k].shape)} vs model {list(own[k].shape)}"
             for k in sorted(own) if k in state_dict and state_dict[k].shape != own[k].shape]
    if missing or wrong:
        raise FoleyError(_mismatch(what, source, own, missing, unexpected, wrong))
    report_unused(what, source, unexpected)
    used = {k: v for k, v in state_dict.items() if k in own}
    if any(v.is_meta for v in own.values()):
        final = {k: v.to(device or v.device, _final_dtype(own[k], dtype)) for k, v in used.items()}
        module.load_state_dict(final, strict=False, assign=True)
    else:
        module.load_state_dict(used, strict=False)


def _final_dtype(own: Tensor, dtype: torch.dtype | None) -> torch.dtype:
    """`dtype` for floating-point tensors (as `module.to(dtype)` would cast them), else the model's."""
    return dtype if dtype is not None and own.is_floating_point() else own.dtype


def report_unused(what: str, source: str | Path | None, keys: Sequence[str]) -> None:
    """One warning line for checkpoint tensors the inference graph never reads."""
    if keys:
        where = f" in {source}" if source is not None else ""
        log.warning("%s weights%s: ignoring %d tensor(s) inference does not use [%s]", what, where, len(keys),
                    _names(sorted(keys)))


def _mismatch(what: str, source: str | Path | None, own: Mapping[str, Tensor], missing: list[str],
              unexpected: list[str], wrong: list[str]) -> str:
    """One line: what is wrong, then the layout the model expects (top-level names and examples)."""
    problems = [f"{label} {len(keys)} [{_names(keys)}]"
                for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
    groups = sorted({k.split(".")[0] for k in own})
    examples = ", ".join(f"{k} {list(own[k].shape)}" for k in sorted(own)[:2])
    where = f" in {source}" if source is not None else ""
    return (f"{what} weights{where} do not match the model: {'; '.join(problems)}; expected {len(own)} tensors "
            f"in the official layout under {', '.join(groups)} (e.g. {examples})")
