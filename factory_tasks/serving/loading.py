"""Loading a deployment's model: where its files are, fetching them, and the build check that
decides which scorer serves.

:class:`ServingConfig` reads the deployment's environment (``MF_MODEL_ARTIFACT``,
``MF_MODEL_DIR``, ``MF_MODEL_VERSION``); a model in remote storage (any fsspec URL) is copied
into a local cache folder by :func:`fetch_model_files` and loaded by :func:`load_pipeline`
(which names the file when it is not a skops archive). :func:`economics_from_metadata` checks
the economics recorded in ``model.metadata.json``. :func:`choose_scorer` serves with the
compiled model (:mod:`factory_tasks.serving.compiled`) when ``model.onnx`` is beside
``model.skops`` and onnxruntime reproduces the skops probabilities on probe customers;
otherwise with the skops pipeline. :class:`PolicyConfig` reads the serving policy (a
challenger's files and share, the exploration epsilon, the test id, the seed; see
``docs/deploy.md``, *The policy*) and names the variable that is wrong. Everything here runs
once per replica, never per request.
"""

from __future__ import annotations

import logging
import math
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from factory_tasks.core.names import (
    CHALLENGER_ARTIFACT_ENV,
    CHALLENGER_DIR_ENV,
    CHALLENGER_SHARE_ENV,
    CHALLENGER_VERSION_ENV,
    EXPLORATION_EPSILON_ENV,
    MODEL_ARTIFACT_ENV,
    MODEL_DIR_ENV,
    MODEL_VERSION_ENV,
    POLICY_SEED_ENV,
    POLICY_TEST_ID_ENV,
)
from factory_tasks.core.schema import OFFERS
from factory_tasks.serving.policy import TEST_ID_MAX_LENGTH
from factory_tasks.serving.requests import RECENCY_MAX, RECENCY_MIN
from factory_tasks.serving.scoring import OfferEconomics, PipelineScorer

log = logging.getLogger(__name__)


class ServingConfigError(RuntimeError):
    """The deployment's environment or model files are not usable."""


def economics_from_metadata(raw: Any, source: str) -> OfferEconomics:
    """The economics recorded in a model's metadata (``raw``, read from ``source``), checked."""
    from factory_tasks.core.config_types import Economics as GridEconomics

    if raw is None:
        raise ServingConfigError(f"{source} has no economics: the model cannot price its offers")
    try:
        checked = GridEconomics.model_validate(raw, strict=False)
    except ValueError as exc:
        raise ServingConfigError(f"{source}: invalid economics: {' '.join(str(exc).split())}") from None
    costs = np.array([float(checked.offer_costs[o]) for o in OFFERS], dtype=np.float64)
    return OfferEconomics(float(checked.conversion_value), costs)


def _locate(value: str, name: str, cwd: Path) -> tuple[str, str]:
    """``(protocol, absolute path)`` of a location: a plain path (relative to ``cwd``) is
    ``file``; a URL is read the way fsspec reads it (as the deploy DAG's object store writes
    it: ``file://`` + the path, not percent-encoded)."""
    if "://" not in value:
        path = Path(value)
        return "file", str(path if path.is_absolute() else cwd / path)
    if value.startswith("file://") and not value.startswith("file:///"):
        raise ServingConfigError(f"{name}={value!r}: a file:// URL needs an absolute path (file:///...)")
    from fsspec.core import url_to_fs

    try:
        fs, path = url_to_fs(value)
    except (ImportError, ValueError) as exc:  # unknown protocol, or its fsspec driver not installed
        raise ServingConfigError(f"{name}={value!r} cannot be read: {exc}") from None
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return ("file" if protocol in ("file", "local") else protocol), path


def _model_cache(remote_dir: str) -> Path:
    import hashlib
    import tempfile

    digest = hashlib.sha256(remote_dir.encode("utf-8")).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "mf-model-cache" / digest


#: the environment variables of a model's files: artifact, its folder, its version
CHAMPION_ENV: tuple[str, str, str] = (MODEL_ARTIFACT_ENV, MODEL_DIR_ENV, MODEL_VERSION_ENV)
CHALLENGER_ENV: tuple[str, str, str] = (CHALLENGER_ARTIFACT_ENV, CHALLENGER_DIR_ENV, CHALLENGER_VERSION_ENV)


@dataclass(frozen=True)
class ServingConfig:
    """Where the deployment's model is: the skops file, its folder, the version it serves.

    ``artifact`` and ``model_dir`` are local paths. When the environment names a remote
    location (any fsspec URL, e.g. the deploy DAG's object store), ``remote_artifact`` is that
    URL and the local paths are a cache folder that :func:`fetch_model_files` fills at load.
    """

    artifact: Path
    model_dir: Path
    model_version: str | None = None
    remote_artifact: str | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], cwd: Path | None = None,
                     names: tuple[str, str, str] = CHAMPION_ENV) -> "ServingConfig":
        """From ``MF_MODEL_ARTIFACT`` (project-relative or absolute path, or a URL: ``file://``,
        ``s3://`` ... as fsspec reads them), ``MF_MODEL_DIR`` (default: the artifact's folder;
        it must be that folder) and ``MF_MODEL_VERSION`` (optional); or the same three under
        other ``names`` (the challenger's: :data:`CHALLENGER_ENV`)."""
        artifact_env, dir_env, version_env = names
        cwd = Path.cwd() if cwd is None else Path(cwd)
        raw = (environ.get(artifact_env) or "").strip()
        if not raw:
            raise ServingConfigError(f"{artifact_env} is not set: the deployment needs the location of model.skops")
        protocol, path = _locate(raw, artifact_env, cwd)
        folder = posixpath.dirname(path.rstrip("/"))
        raw_dir = (environ.get(dir_env) or "").strip()
        if raw_dir:
            dir_protocol, dir_path = _locate(raw_dir, dir_env, cwd)
            same = (dir_protocol == protocol and (
                Path(dir_path).resolve() == Path(folder).resolve() if protocol == "file"
                else dir_path.rstrip("/") == folder))
            if not same:
                raise ServingConfigError(
                    f"{dir_env}={raw_dir!r} is not the folder of {artifact_env}={raw!r}: "
                    "the metadata and model.onnx live beside model.skops"
                )
        version = (environ.get(version_env) or "").strip() or None
        if protocol == "file":
            return cls(artifact=Path(path), model_dir=Path(folder), model_version=version)
        cache = _model_cache(f"{protocol}://{folder}")
        return cls(artifact=cache / posixpath.basename(path), model_dir=cache, model_version=version,
                   remote_artifact=raw)


def _fraction(environ: Mapping[str, str], name: str, what: str) -> float | None:
    """A variable holding a number in [0, 1), or None when unset."""
    raw = (environ.get(name) or "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ServingConfigError(f"{name}={raw!r} is not a number: it is {what}, 0 <= {name} < 1") from None
    if not (math.isfinite(value) and 0.0 <= value < 1.0):
        raise ServingConfigError(f"{name}={raw!r} is out of range: it is {what}, 0 <= {name} < 1")
    return value


@dataclass(frozen=True)
class PolicyConfig:
    """The serving policy of a deployment (``docs/deploy.md``, *The policy*): the challenger's
    files and share, the exploration epsilon, the test id salting the sticky arm hash (None:
    ``"<champion version>:<challenger version>"`` at load) and the generator's seed (None:
    fresh entropy). The default is today's endpoint: the champion alone, no exploration."""

    challenger: ServingConfig | None = None
    challenger_share: float = 0.0
    epsilon: float = 0.0
    test_id: str | None = None
    seed: int | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], cwd: Path | None = None) -> "PolicyConfig":
        """From ``MF_CHALLENGER_ARTIFACT`` / ``_DIR`` / ``_VERSION`` (as the champion's),
        ``MF_CHALLENGER_SHARE``, ``MF_EXPLORATION_EPSILON``, ``MF_POLICY_TEST_ID`` and
        ``MF_POLICY_SEED``; a ServingConfigError names the variable that is wrong."""
        share = _fraction(environ, CHALLENGER_SHARE_ENV, "the share of customers the challenger decides for")
        epsilon = _fraction(environ, EXPLORATION_EPSILON_ENV, "the share of customers offered a random offer")
        has_challenger = bool((environ.get(CHALLENGER_ARTIFACT_ENV) or "").strip())
        challenger = None
        if has_challenger:
            if share is None:
                raise ServingConfigError(
                    f"{CHALLENGER_SHARE_ENV} is not set: {CHALLENGER_ARTIFACT_ENV} names a challenger, which needs "
                    "the share of customers it decides for (0 <= share < 1)")
            challenger = ServingConfig.from_environ(environ, cwd, names=CHALLENGER_ENV)
            champion_raw = (environ.get(MODEL_ARTIFACT_ENV) or "").strip()
            if champion_raw and ServingConfig.from_environ(environ, cwd).artifact == challenger.artifact:
                raise ServingConfigError(f"{CHALLENGER_ARTIFACT_ENV} names the champion's own file "
                                         f"({MODEL_ARTIFACT_ENV}={champion_raw!r}): a challenger is another model")
        else:
            for name in (CHALLENGER_DIR_ENV, CHALLENGER_VERSION_ENV):
                if (environ.get(name) or "").strip():
                    raise ServingConfigError(f"{name} is set but {CHALLENGER_ARTIFACT_ENV} is not: "
                                             "the challenger needs the location of its model.skops")
            if share:
                raise ServingConfigError(f"{CHALLENGER_SHARE_ENV}={share:g} but {CHALLENGER_ARTIFACT_ENV} is not set: "
                                         "there is no challenger to decide for that share")
        test_id = (environ.get(POLICY_TEST_ID_ENV) or "").strip() or None
        if test_id is not None and len(test_id) > TEST_ID_MAX_LENGTH:
            raise ServingConfigError(f"{POLICY_TEST_ID_ENV} is {len(test_id)} characters long; "
                                     f"at most {TEST_ID_MAX_LENGTH}")
        raw_seed = (environ.get(POLICY_SEED_ENV) or "").strip()
        seed = None
        if raw_seed:
            try:
                seed = int(raw_seed)
            except ValueError:
                seed = -1
            if seed < 0:
                raise ServingConfigError(f"{POLICY_SEED_ENV}={raw_seed!r} is not a whole number >= 0 "
                                         "(the seed of the replica's random generator)")
        return cls(challenger=challenger, challenger_share=share or 0.0, epsilon=epsilon or 0.0,
                   test_id=test_id, seed=seed)


def fetch_model_files(config: ServingConfig) -> None:
    """Copy a remote model's files (skops, metadata, ``model.onnx`` if there) into the local
    cache folder of ``config``; nothing to do for a local model."""
    if config.remote_artifact is None:
        return
    from fsspec.core import url_to_fs

    from factory_tasks.core.atomic import write_atomic
    from factory_tasks.serving.compiled import ONNX_FILENAME
    from factory_tasks.training.artifacts import METADATA_FILENAME

    fs, path = url_to_fs(config.remote_artifact)
    folder = posixpath.dirname(path.rstrip("/"))
    for name in (posixpath.basename(path), METADATA_FILENAME, ONNX_FILENAME):
        source, target = f"{folder}/{name}", config.model_dir / name
        if name == ONNX_FILENAME and not fs.exists(source):
            target.unlink(missing_ok=True)  # never serve a stale compiled copy
            continue
        try:
            write_atomic(target, fs.cat_file(source))
        except FileNotFoundError:
            raise FileNotFoundError(f"no model file at {config.remote_artifact.rsplit('/', 1)[0]}/{name}") from None
    log.info("fetched the model files of %s into %s", config.remote_artifact, config.model_dir)


def load_pipeline(config: ServingConfig) -> Any:
    """The pipeline in ``config.artifact`` (safe skops loader); a file that is not a readable skops
    archive (truncated, corrupt, another format) is a ServingConfigError naming it."""
    import zipfile
    import zlib

    from factory_tasks.training import artifacts

    try:
        return artifacts.load_model(config.artifact)
    except artifacts.UntrustedModelError:  # a ValueError too, with its own message
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, KeyError, ValueError) as exc:  # ValueError: bad JSON inside
        where = (f"{config.remote_artifact} (fetched to {config.artifact})" if config.remote_artifact
                 else str(config.artifact))
        raise ServingConfigError(f"{where} is not a valid skops file (truncated or corrupt): "
                                 f"{type(exc).__name__}: {exc}") from None


def _probe_customers() -> pd.DataFrame:
    """Customers the compiled model must agree with skops on before it serves: simulated ones
    plus the corners of the valid input space."""
    from factory_tasks.loop.simulator import simulate_customers

    probe = simulate_customers(200, seed=20_240_601)
    corners = pd.DataFrame({
        "recency": [RECENCY_MIN, RECENCY_MAX, RECENCY_MIN, RECENCY_MAX],
        "history": [0.0, 29.99, 3345.93, 250_000.0],
        "used_discount": [0, 1, 1, 0], "used_bogo": [1, 0, 1, 1],
        "zip_code": ["Surburban", "Urban", "Rural", "Urban"], "is_referral": [0, 1, 1, 0],
        "channel": ["Web", "Phone", "Multichannel", "Web"],
    })
    return pd.concat([probe, corners], ignore_index=True)


def choose_scorer(pipeline: Any, model_dir: Path) -> tuple[Any, str]:
    """The compiled scorer if ``model.onnx`` is there and agrees with skops, else the pipeline."""
    from factory_tasks.serving.compiled import ONNX_FILENAME, TOLERANCE, CompiledScorer, parity_gap

    skops = PipelineScorer(pipeline)
    onnx_path = model_dir / ONNX_FILENAME
    if not onnx_path.is_file():
        return skops, f"no {ONNX_FILENAME} beside the model"
    try:
        compiled = CompiledScorer.from_file(onnx_path)
        gap = parity_gap(compiled, pipeline, _probe_customers())
    except Exception as exc:  # e.g. onnxruntime missing, a corrupt file: serve from skops
        log.warning("not using %s: %s: %s", onnx_path, type(exc).__name__, exc)
        return skops, f"{ONNX_FILENAME} unusable ({type(exc).__name__}: {exc})"
    if not gap <= TOLERANCE:
        log.warning("not using %s: it differs from model.skops by %.3g (> %g)", onnx_path, gap, TOLERANCE)
        return skops, f"{ONNX_FILENAME} differs from model.skops by {gap:.3g}"
    return compiled, f"{ONNX_FILENAME} agrees with model.skops (max |dP| {gap:.3g})"
