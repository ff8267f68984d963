"""fp16 safetensors weights with a model card (Markdown + JSON) beside them.

Files for model ``NAME`` in the weights folder (``$TRIAGE_WEIGHTS_DIR`` or the package's
``engine/weights/``): ``NAME.safetensors`` (floating tensors in fp16; the model name and its
constructor config in the header metadata), ``NAME.card.json`` (machine-readable card: data,
split, schedule, hardware, metrics, threshold, date, commit) and ``NAME.md`` (the same for humans).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "LoadedWeights",
    "WeightsError",
    "card_path",
    "file_sha256",
    "git_commit",
    "load_card",
    "load_weights",
    "save_weights",
    "weights_dir",
    "weights_path",
    "write_card",
]

_PACKAGE_WEIGHTS = Path(__file__).resolve().parent / "weights"


class WeightsError(RuntimeError):
    """Weights missing, unreadable or not matching their model; the message names the file and the fix."""


@dataclass
class LoadedWeights:
    """A model rebuilt from its weights file, with its card and identity."""

    model: Any
    name: str
    config: dict[str, Any]
    card: dict[str, Any]
    path: Path
    sha256: str

    @property
    def version(self) -> str:
        """``NAME@<first 12 hex digits of the weights' sha256>``: changes whenever the weights do."""
        return f"{self.name}@{self.sha256[:12]}"


def weights_dir() -> Path:
    """``$TRIAGE_WEIGHTS_DIR`` if set, else the committed ``engine/weights/``."""
    env = os.environ.get("TRIAGE_WEIGHTS_DIR")
    return Path(env) if env else _PACKAGE_WEIGHTS


def weights_path(name: str, directory: Path | None = None) -> Path:
    return (directory or weights_dir()) / f"{name}.safetensors"


def card_path(name: str, directory: Path | None = None) -> Path:
    return (directory or weights_dir()) / f"{name}.card.json"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def git_commit() -> str:
    """The repository's HEAD commit (with ``-dirty`` if the engine has local changes), or ``unknown``."""
    repo = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "engine"], cwd=repo, capture_output=True, check=False,
                               text=True, timeout=10).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def save_weights(model: Any, name: str, config: dict[str, Any], directory: Path | None = None) -> Path:
    """Write the model's state dict as fp16 safetensors (integer buffers unchanged).

    Returns the path written. The file is written to a temporary name and renamed, so a reader never
    sees half a file.
    """
    import torch
    from safetensors.torch import save_file

    path = weights_path(name, directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.detach().to(torch.float16) if v.is_floating_point() else v.detach()).contiguous().cpu()
             for k, v in model.state_dict().items()}
    tmp = path.with_suffix(".safetensors.tmp")
    save_file(state, str(tmp), metadata={"model": name, "config": json.dumps(config, sort_keys=True),
                                         "format": "pt", "dtype": "float16"})
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


def _fix_hint(name: str) -> str:
    return (f"train it with 'triage train {name}' (writes {name}.safetensors and its card), or point "
            "TRIAGE_WEIGHTS_DIR at a folder that holds them")


def load_card(name: str, directory: Path | None = None) -> dict[str, Any]:
    """The JSON model card, or ``{}`` if there is none."""
    p = card_path(name, directory)
    if not p.is_file():
        return {}
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightsError(f"model card {p} is unreadable ({exc}); {_fix_hint(name)}") from exc


def load_weights(name: str, directory: Path | None = None) -> LoadedWeights:
    """Rebuild model ``name`` in fp32 from its fp16 safetensors file.

    Raises
    ------
    WeightsError
        If the file is missing, corrupt, for another model, or does not fit the architecture.
    """
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from engine.models import build_model

    path = weights_path(name, directory)
    if not path.is_file():
        raise WeightsError(f"weights file {path} not found; {_fix_hint(name)}")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise WeightsError(f"weights file {path} is corrupt or not safetensors ({exc}); {_fix_hint(name)}") from exc
    if meta.get("model") != name:
        raise WeightsError(f"weights file {path} holds model {meta.get('model')!r}, not {name!r}; {_fix_hint(name)}")
    try:
        config = json.loads(meta.get("config", "{}"))
        model = build_model(name, config)
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except (ValueError, RuntimeError, TypeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"weights file {path} does not fit model {name!r} ({exc}); {_fix_hint(name)}") from exc
    model.eval()
    torch.set_grad_enabled(torch.is_grad_enabled())
    return LoadedWeights(model, name, config, load_card(name, directory), path, file_sha256(path))


def write_card(name: str, card: dict[str, Any], directory: Path | None = None) -> tuple[Path, Path]:
    """Write ``NAME.card.json`` and ``NAME.md`` (rendered from the same dict)."""
    d = directory or weights_dir()
    d.mkdir(parents=True, exist_ok=True)
    jp = card_path(name, d)
    jp.write_text(json.dumps(card, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    mp = d / f"{name}.md"
    mp.write_text(render_card(card), encoding="utf-8")
    return jp, mp


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if v != 0 and abs(v) < 0.01 else f"{v:.3f}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={_fmt(x)}" for k, x in v.items())
    if isinstance(v, list | tuple):
        return ", ".join(_fmt(x) for x in v)
    return str(v)


def _table(rows: dict[str, dict[str, Any]] | list[dict[str, Any]]) -> list[str]:
    items = list(rows.items()) if isinstance(rows, dict) else [("", r) for r in rows]
    cols: list[str] = []
    for _, r in items:
        cols += [c for c in r if c not in cols]
    lead = ["| |"] if isinstance(rows, dict) else ["|"]
    out = [lead[0] + " " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + (1 if isinstance(rows, dict) else 0))]
    for k, r in items:
        cells = " | ".join(_fmt(r.get(c, "")) for c in cols)
        out.append(f"| {k} | {cells} |" if isinstance(rows, dict) else f"| {cells} |")
    return out


def _nested(v: Any) -> bool:
    return isinstance(v, dict) or (isinstance(v, list) and bool(v) and isinstance(v[0], dict))


def _section(value: Any, level: int) -> list[str]:
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return _table(value) + [""]
    if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()) and \
            all(not _nested(x) for v in value.values() for x in v.values()):
        return _table(value) + [""]
    if isinstance(value, dict):
        lines = [f"- **{k}**: {_fmt(v)}" for k, v in value.items() if not _nested(v)]
        lines += [""] if lines else []
        for k, v in value.items():
            if _nested(v):
                lines += [f"{'#' * level} {k}", ""] + _section(v, level + 1)
        return lines
    return [_fmt(value), ""]


def render_card(card: dict[str, Any]) -> str:
    """Markdown rendering of a card: one section per top-level key, nested dicts as sub-sections,
    rows of metrics (and training histories) as tables."""
    lines = [f"# Model card: {card.get('model', '?')}", ""]
    for key, value in card.items():
        if key == "model":
            continue
        lines += [f"## {key.replace('_', ' ').capitalize()}", ""] + _section(value, 3)
    return "\n".join(lines)
