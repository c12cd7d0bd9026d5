"""Checkpoints: safetensors weights, an optional safetensors optimizer state, a JSON sidecar.

``cycle-0003.safetensors`` holds the weights, ``cycle-0003.optim.safetensors`` the optimizer's
per-parameter tensors keyed by parameter *name* (so they survive growth), and
``cycle-0003.json`` everything else: the model config, depth, frozen mask, hyper-parameters, step
counts, checksums and the caller's metadata. No pickle anywhere, so loading a checkpoint
never runs code. Every file is written to a temporary name, fsynced and renamed into place,
the sidecar last: a sidecar on disk means the files it names were complete.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from dte_aar.atomic import atomic_write_text, fsync_dir
from dte_aar.files import sha256_file
from dte_aar.model import GrowingTransformer, ModelConfig

FORMAT = "dte-aar-checkpoint"
VERSION = 1


class CheckpointError(Exception):
    """A checkpoint that is missing, incomplete, corrupt or not the one expected."""


def sidecar_path(path: Path) -> Path:
    return Path(path).with_suffix(".json")


def optimizer_path(path: Path) -> Path:
    path = Path(path)
    return path.with_name(f"{path.stem}.optim.safetensors")


# --------------------------------------------------------------------------- saving
def save_checkpoint(
    path: Path,
    model: GrowingTransformer,
    meta: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
) -> str:
    """Write weights, optimizer state and sidecar atomically; return the weights' sha256.

    ``meta`` (cycle, step, tokenizer hash, stage...) goes into the sidecar as is; the keys
    this function writes itself (format, config, layers, frozen, weights, optimizer...) win.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    sha = _write_tensors(state, path)
    sidecar: dict[str, Any] = {
        **meta,
        "format": FORMAT,
        "version": VERSION,
        "config": asdict(model.config),
        "layers": len(model.blocks),
        "n_trainable": model.n_trainable,
        "frozen": model.frozen_mask(),
        "params": model.num_params(),
        "weights": {"file": path.name, "sha256": sha},
        "optimizer": None,
    }
    opt_file = optimizer_path(path)
    if optimizer is not None:
        tensors, info = _flatten_optimizer(model, optimizer)
        opt_sha = _write_tensors(tensors, opt_file)
        sidecar["optimizer"] = {"file": opt_file.name, "sha256": opt_sha, **info}
    atomic_write_text(sidecar_path(path), json.dumps(sidecar, indent=1, sort_keys=True))
    if optimizer is None:
        opt_file.unlink(missing_ok=True)  # a stale one from an earlier save at this path
    return sha


def _write_tensors(tensors: dict[str, torch.Tensor], path: Path) -> str:
    """save_file to a temporary sibling, fsync, rename; return the file's sha256."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        open(tmp, "wb").close()  # learn the umask's mode: safetensors writes files 0600
        mode = os.stat(tmp).st_mode & 0o777
        save_file(tensors, tmp)
        os.chmod(tmp, mode)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        sha = sha256_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return sha


def _flatten_optimizer(
    model: GrowingTransformer, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors keyed ``<param name>:<state key>``; hyper-parameters and scalars (step) as JSON."""
    names = {id(p): n for n, p in model.named_parameters()}
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, float]] = {}
    groups: list[dict[str, Any]] = []
    for group in optimizer.param_groups:
        hyper = {k: _jsonable(v) for k, v in group.items() if k != "params"}
        hyper["params"] = [names[id(p)] for p in group["params"]]
        groups.append(hyper)
        for p in group["params"]:
            name = names[id(p)]
            for key, value in optimizer.state.get(p, {}).items():
                if torch.is_tensor(value) and value.ndim > 0:
                    tensors[f"{name}:{key}"] = value.detach().to("cpu").contiguous()
                else:
                    scalars.setdefault(name, {})[key] = float(value)
    info = {"type": type(optimizer).__name__, "param_groups": groups, "scalars": scalars}
    return tensors, info


def _jsonable(value: Any) -> Any:
    if torch.is_tensor(value):
        return value.item() if value.ndim == 0 else value.tolist()
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


# --------------------------------------------------------------------------- loading
def read_sidecar(path: Path) -> dict[str, Any]:
    """The sidecar of checkpoint ``path``, checked for format; CheckpointError otherwise."""
    side = sidecar_path(path)
    try:
        sidecar = json.loads(side.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{side}: sidecar missing (checkpoint incomplete)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{side}: unreadable sidecar ({exc})") from None
    if not isinstance(sidecar, dict) or sidecar.get("format") != FORMAT:
        raise CheckpointError(f"{side}: not a {FORMAT} sidecar")
    if sidecar.get("version") != VERSION:
        raise CheckpointError(f"{side}: format version {sidecar.get('version')} unsupported")
    return sidecar


def _verified_tensors(path: Path, want_sha: str, what: str) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise CheckpointError(f"{path}: {what} file missing")
    sha = sha256_file(path)
    if sha != want_sha:
        raise CheckpointError(
            f"{path}: {what} sha256 {sha[:12]} does not match the recorded {want_sha[:12]} "
            "(truncated or corrupt)"
        )
    try:
        return load_file(path)
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: unreadable {what} ({exc})") from None


def load_checkpoint(
    path: Path, expected_sha256: str | None = None, device: str | torch.device = "cpu"
) -> tuple[GrowingTransformer, dict[str, Any]]:
    """Load and verify a checkpoint; return the model (frozen as saved) and the sidecar.

    Raises :class:`CheckpointError` for a missing, truncated or corrupt file, or when the
    weights' sha256 is not ``expected_sha256``.
    """
    path = Path(path)
    sidecar = read_sidecar(path)
    try:
        recorded = sidecar["weights"]["sha256"]
        config = ModelConfig(**sidecar["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{sidecar_path(path)}: bad sidecar ({exc})") from None
    if expected_sha256 is not None and recorded != expected_sha256:
        raise CheckpointError(
            f"{path}: sha256 {recorded[:12]} is not the registered {expected_sha256[:12]}"
        )
    state = _verified_tensors(path, recorded, "weights")
    with torch.device("meta"):  # no throwaway init: the weights arrive from the file
        model = GrowingTransformer(config)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1].strip()
        raise CheckpointError(f"{path}: weights do not fit the sidecar's model ({first})") from None
    model.set_trainable(sidecar.get("n_trainable"))
    return model.to(device), sidecar


def load_optimizer_state(
    path: Path, model: GrowingTransformer, optimizer: torch.optim.Optimizer
) -> int:
    """Restore the saved optimizer state of every parameter the optimizer and the checkpoint
    share by name and shape (a grown block's new parameters start fresh). Returns how many
    parameters were restored; hyper-parameters stay the optimizer's own."""
    sidecar = read_sidecar(path)
    info = sidecar.get("optimizer")
    if not info:
        return 0
    tensors = _verified_tensors(optimizer_path(path), info["sha256"], "optimizer state")
    scalars: dict[str, dict[str, float]] = info.get("scalars", {})
    names = {id(p): n for n, p in model.named_parameters()}
    current = optimizer.state_dict()  # param_groups hold positional ids, in this order
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state: dict[int, dict[str, Any]] = {}
    for i, p in enumerate(params):
        name = names.get(id(p))
        if name is None:
            continue
        entry: dict[str, Any] = {
            key: torch.tensor(value, dtype=torch.float32)
            for key, value in scalars.get(name, {}).items()
        }
        prefix = f"{name}:"
        for key, tensor in tensors.items():
            if key.startswith(prefix):
                entry[key[len(prefix) :]] = tensor
        moments = [v for v in entry.values() if v.ndim > 0]
        if moments and all(v.shape == p.shape for v in moments):
            state[i] = entry
    optimizer.load_state_dict({"state": state, "param_groups": current["param_groups"]})
    return len(state)
