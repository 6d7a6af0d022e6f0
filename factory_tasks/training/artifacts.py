"""Model files: a skops archive plus a JSON metadata file beside it.

``save_model`` writes ``model.skops`` (``skops.io.dump``, never pickle) and
``model.metadata.json``: library versions, the caller's facts (params, CV scores, data snapshot
hash, what the model was fitted on ...) and ``created_at``. Both files are written atomically.

``load_model`` trusts only what the factory itself can produce: it asks skops which types in the
file are not trusted by default and loads the file only if every one of them belongs to
scikit-learn or numpy (:data:`TRUSTED_TYPE_PREFIXES`). Anything else — a custom class, a
function from some module, a builtin like ``eval`` — is refused with :class:`UntrustedModelError`
naming the offending types; nothing is ever loaded with ``trusted=True``.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from factory_tasks.core.atomic import write_atomic
from factory_tasks.core.versions import library_versions

MODEL_FILENAME = "model.skops"
METADATA_FILENAME = "model.metadata.json"
METADATA_FORMAT_VERSION = 1

#: Type names (``module.qualname``) starting with one of these are trusted when loading.
TRUSTED_TYPE_PREFIXES: tuple[str, ...] = ("sklearn.", "numpy.")


class UntrustedModelError(ValueError):
    """A model file contains types outside the allow-list; it was not loaded."""

    def __init__(self, path: Path, untrusted: list[str]):
        self.path = Path(path)
        self.untrusted = list(untrusted)
        super().__init__(
            f"refusing to load {self.path}: it contains type(s) outside the trusted prefixes "
            f"{list(TRUSTED_TYPE_PREFIXES)}: {', '.join(self.untrusted)}"
        )


def _json_text(payload: Any) -> str:
    """Strict JSON (NaN/inf are an error, as they are not JSON)."""
    return json.dumps(payload, indent=2, sort_keys=True, allow_nan=False) + "\n"


def write_json_atomic(path: Path | str, payload: Any) -> Path:
    """Write ``payload`` as JSON (strict: NaN/inf are an error) atomically."""
    return write_atomic(path, _json_text(payload))


def save_model(
    pipeline: Any, directory: Path | str, metadata: Mapping[str, Any]
) -> tuple[Path, Path]:
    """Save ``pipeline`` to ``directory/model.skops`` with ``model.metadata.json`` beside it.

    ``metadata`` should carry what only the caller knows (estimator, params, cv scores,
    data_snapshot_hash, fitted_on ...); library versions, the file names and ``created_at`` are
    added here. Returns ``(model_path, metadata_path)``.
    """
    import skops.io as sio

    directory = Path(directory)
    model_path = directory / MODEL_FILENAME
    metadata_path = directory / METADATA_FILENAME
    record = {
        **dict(metadata),
        "format": "skops",
        "format_version": METADATA_FORMAT_VERSION,
        "model_file": MODEL_FILENAME,
        "model_class": f"{type(pipeline).__module__}.{type(pipeline).__qualname__}",
        "libraries": library_versions(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    _json_text(record)  # refuse unserialisable metadata before writing anything
    write_atomic(model_path, lambda tmp: sio.dump(pipeline, tmp))
    write_json_atomic(metadata_path, record)
    return model_path, metadata_path


def untrusted_types(path: Path | str) -> list[str]:
    """Types in a skops file that skops does not trust by default."""
    import skops.io as sio

    return sorted(sio.get_untrusted_types(file=Path(path)))


def load_model(path: Path | str) -> Any:
    """Load a skops model file, trusting only sklearn/numpy types (else UntrustedModelError)."""
    import skops.io as sio

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    extra = untrusted_types(path)
    refused = [t for t in extra if not t.startswith(TRUSTED_TYPE_PREFIXES)]
    if refused:
        raise UntrustedModelError(path, refused)
    return sio.load(path, trusted=extra)


def load_metadata(model_path: Path | str) -> dict[str, Any]:
    """The metadata file beside a model file."""
    with open(Path(model_path).with_name(METADATA_FILENAME), encoding="utf-8") as fh:
        return json.load(fh)
