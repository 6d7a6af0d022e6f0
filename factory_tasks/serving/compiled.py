"""A compiled (ONNX) scoring path for fitted model pipelines, checked against the original.

The skops archive stays the source of truth; ``model.onnx`` beside it is an optional, faster
copy of the same function. :func:`compile_pipeline` converts a fitted
:func:`~factory_tasks.training.features.build_pipeline` pipeline with ``skl2onnx`` and keeps the result
only if onnxruntime reproduces the pipeline's P(conversion) on the given rows — each row scored
with every offer, as serving does — within :data:`TOLERANCE`. Otherwise it returns ``None``
and the reason, and the model is served from skops.

Graph inputs are the :data:`~factory_tasks.core.schema.FEATURE_COLUMNS`, one ``[None, 1]``
tensor each: int64 for the integer columns, float32 for ``history`` (the tree operators of
``ai.onnx.ml`` opset 3 compute in float32) and strings for the categoricals.

What converts (skl2onnx 1.20, onnxruntime 1.32, scikit-learn 1.9, ``TARGET_OPSET``):

``RandomForestClassifier``, ``GradientBoostingClassifier``
    as they are.
``LogisticRegression``
    skl2onnx refuses a ``FunctionTransformer`` with a function ("not supported unless the
    transform function is None"), and the linear pipeline log1p-transforms ``history``. A
    per-call converter (:func:`_function_transformer_converter`) emits ``Log(X + 1)`` for
    exactly ``numpy.log1p`` (and the library's identity for ``func=None``, which is how a
    ``ColumnTransformer`` ``"passthrough"`` arrives); any other function is still refused.
``HistGradientBoostingClassifier``
    the library's converter builds ``nodes_missing_value_tracks_true`` with Python booleans
    for the leaves, which protobuf 7 rejects ("Field onnx.AttributeProto.ints: Expected an
    int, got a boolean"). The same converter runs here with that one attribute cast to int
    (:class:`_IntMissingTracksContainer`). Inputs never hold NaN (serving validates them), so
    the missing-value routing plays no part. A double-precision ``history`` input gives wrong
    probabilities (up to 0.12 off) with this converter, which is one more reason the inputs
    are float32 and every compile is checked.

Nothing here changes skl2onnx's global registry: the converters are passed per call.
``skl2onnx`` is imported only to compile, ``onnxruntime`` only to score.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from factory_tasks.core.schema import CUSTOMER_COLUMNS, FEATURE_COLUMNS, INTERACTION_DTYPES, OFFERS
from factory_tasks.core.text import shorten

log = logging.getLogger(__name__)

#: the compiled model's file name, beside ``model.skops`` and ``model.metadata.json``
ONNX_FILENAME = "model.onnx"
#: ONNX opsets the graphs are built for (what onnxruntime 1.32 runs and skl2onnx 1.20 tests)
TARGET_OPSET: dict[str, int] = {"": 17, "ai.onnx.ml": 3}
#: the largest |P_onnx - P_skops| accepted on the check rows
TOLERANCE = 1e-5
#: graph input element types, one per feature column (see the module docstring)
INPUT_DTYPES: dict[str, Any] = {
    column: {"int64": np.int64, "float64": np.float32, "str": object}[INTERACTION_DTYPES[column]]
    for column in FEATURE_COLUMNS
}
_PROBABILITIES = "probabilities"


def stack_offers(columns: Mapping[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """The customer columns repeated once per offer, plus ``offer``: ``3n`` rows.

    Row ``k * n + i`` is customer ``i`` with offer ``OFFERS[k]``, so ``p.reshape(3, n).T`` is
    the (n, 3) matrix with columns in OFFERS order (as ``features.counterfactual_proba``).
    """
    stacked = {name: np.tile(np.asarray(columns[name]), len(OFFERS)) for name in CUSTOMER_COLUMNS}
    stacked["offer"] = np.repeat(np.asarray(OFFERS, dtype=object), n)
    return stacked


def frame_columns(frame: Any) -> dict[str, np.ndarray]:
    """The customer columns of a data frame as numpy arrays (strings as object arrays)."""
    missing = [c for c in CUSTOMER_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"the frame lacks customer column(s) {missing}")
    return {
        c: frame[c].to_numpy(dtype=object if INPUT_DTYPES[c] is object else None)
        for c in CUSTOMER_COLUMNS
    }


class CompiledScorer:
    """An ONNX model of a pipeline, loaded once into an onnxruntime session.

    ``threads`` bounds onnxruntime's intra-op threads: a model replica serves one request at a
    time and one customer x 3 offers is far too small to split.
    """

    #: how serving names this scorer in its logs and ``build_check()``
    name = "onnx"

    def __init__(self, onnx_bytes: bytes, *, threads: int = 1):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self._session = ort.InferenceSession(
            bytes(onnx_bytes), sess_options=options, providers=["CPUExecutionProvider"]
        )
        inputs = {i.name for i in self._session.get_inputs()}
        outputs = {o.name for o in self._session.get_outputs()}
        if inputs != set(FEATURE_COLUMNS) or _PROBABILITIES not in outputs:
            raise ValueError(
                f"not a compiled model pipeline: inputs {sorted(inputs)}, outputs {sorted(outputs)} "
                f"(expected inputs {list(FEATURE_COLUMNS)} and an output {_PROBABILITIES!r})"
            )
        self._outputs = [_PROBABILITIES]

    @classmethod
    def from_file(cls, path: Path | str, *, threads: int = 1) -> "CompiledScorer":
        return cls(Path(path).read_bytes(), threads=threads)

    def positive_proba_columns(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        """P(conversion = 1) for rows given as one array per feature column (float64)."""
        feeds = {
            name: np.asarray(columns[name], dtype=dtype).reshape(-1, 1)
            for name, dtype in INPUT_DTYPES.items()
        }
        (proba,) = self._session.run(self._outputs, feeds)
        return proba[:, 1].astype(np.float64)

    def positive_proba(self, features: Any) -> np.ndarray:
        """P(conversion = 1) for a frame with the FEATURE_COLUMNS (like features.positive_proba)."""
        columns = frame_columns(features)
        columns["offer"] = features["offer"].to_numpy(dtype=object)
        return self.positive_proba_columns(columns)

    def offer_proba_columns(self, columns: Mapping[str, np.ndarray], n: int) -> np.ndarray:
        """(n, 3) P(conversion | customer, offer), columns in OFFERS order; one session run."""
        if n == 0:
            return np.empty((0, len(OFFERS)))
        return self.positive_proba_columns(stack_offers(columns, n)).reshape(len(OFFERS), n).T

    def counterfactual_proba(self, customers: Any) -> np.ndarray:
        """(n, 3) P(conversion | customer, offer) for a frame of customers."""
        return self.offer_proba_columns(frame_columns(customers), len(customers))


# --------------------------------------------------------------------------------------------
# conversion


def _function_transformer_shape(operator: Any) -> None:
    from skl2onnx.shape_calculators.function_transformer import (
        calculate_sklearn_function_transformer_output_shapes,
    )

    if operator.raw_operator.func is None:
        calculate_sklearn_function_transformer_output_shapes(operator)
        return
    _check_log1p(operator.raw_operator)
    operator.outputs[0].type = copy.deepcopy(operator.inputs[0].type)


def _check_log1p(transformer: Any) -> None:
    if transformer.func is not np.log1p or transformer.kw_args:
        raise RuntimeError(
            f"FunctionTransformer({getattr(transformer.func, '__name__', transformer.func)!r}) has "
            "no ONNX converter (only numpy.log1p without kw_args and the identity are supported)"
        )


def _function_transformer_converter(scope: Any, operator: Any, container: Any) -> None:
    """``FunctionTransformer``: identity (skl2onnx's own converter) or ``Log(X + 1)``."""
    from onnx import TensorProto
    from skl2onnx.common.data_types import DoubleTensorType
    from skl2onnx.operator_converters.function_transformer import (
        convert_sklearn_function_transformer,
    )

    transformer = operator.raw_operator
    if transformer.func is None:
        convert_sklearn_function_transformer(scope, operator, container)
        return
    _check_log1p(transformer)
    if len(operator.inputs) != 1:
        raise RuntimeError("FunctionTransformer(log1p) over several inputs is not supported")
    double = isinstance(operator.inputs[0].type, DoubleTensorType)
    one = scope.get_unique_variable_name("one")
    container.add_initializer(one, TensorProto.DOUBLE if double else TensorProto.FLOAT, [], [1.0])
    plus_one = scope.get_unique_variable_name("plus_one")
    container.add_node(
        "Add", [operator.inputs[0].full_name, one], plus_one,
        name=scope.get_unique_operator_name("Log1pAdd"),
    )
    container.add_node(
        "Log", plus_one, operator.outputs[0].full_name,
        name=scope.get_unique_operator_name("Log1p"),
    )


class _IntMissingTracksContainer:
    """A view of an skl2onnx container whose ``add_node`` casts ``nodes_missing_value_tracks_true``
    to ints (skl2onnx 1.20 passes booleans, which protobuf 7 refuses)."""

    def __init__(self, container: Any):
        self._container = container

    def __getattr__(self, name: str) -> Any:
        return getattr(self._container, name)

    def add_node(self, *args: Any, **attrs: Any) -> Any:
        flags = attrs.get("nodes_missing_value_tracks_true")
        if flags is not None:
            attrs["nodes_missing_value_tracks_true"] = [int(v) for v in flags]
        return self._container.add_node(*args, **attrs)


def _hist_gradient_boosting_converter(scope: Any, operator: Any, container: Any) -> None:
    from skl2onnx.operator_converters.random_forest import convert_sklearn_random_forest_classifier

    convert_sklearn_random_forest_classifier(scope, operator, _IntMissingTracksContainer(container))


def _initial_types() -> list[tuple[str, Any]]:
    from skl2onnx.common.data_types import FloatTensorType, Int64TensorType, StringTensorType

    kinds = {np.int64: Int64TensorType, np.float32: FloatTensorType, object: StringTensorType}
    return [(name, kinds[dtype]([None, 1])) for name, dtype in INPUT_DTYPES.items()]


def to_onnx(pipeline: Any) -> bytes:
    """Convert a fitted model pipeline to ONNX bytes (raises when it cannot be converted)."""
    from skl2onnx import convert_sklearn
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.preprocessing import FunctionTransformer

    classifier = pipeline.steps[-1][1]
    classes = [int(c) for c in getattr(classifier, "classes_", [])]
    if classes != [0, 1]:
        raise ValueError(f"the classifier must have been fitted on classes [0, 1], has {classes}")
    model = convert_sklearn(
        pipeline,
        name="next_best_offer",
        initial_types=_initial_types(),
        target_opset=dict(TARGET_OPSET),
        options={id(classifier): {"zipmap": False}},
        custom_conversion_functions={
            FunctionTransformer: _function_transformer_converter,
            HistGradientBoostingClassifier: _hist_gradient_boosting_converter,
        },
        custom_shape_calculators={FunctionTransformer: _function_transformer_shape},
    )
    return model.SerializeToString()


def _reference_proba(pipeline: Any, columns: Mapping[str, np.ndarray], n: int) -> np.ndarray:
    import pandas as pd

    from factory_tasks.training.features import positive_proba

    stacked = pd.DataFrame(stack_offers(columns, n), columns=list(FEATURE_COLUMNS))
    return positive_proba(pipeline, stacked).reshape(len(OFFERS), n).T


def parity_gap(scorer: CompiledScorer, pipeline: Any, customers: Any) -> float:
    """max |P_onnx - P_pipeline| over ``customers`` x every offer."""
    columns = frame_columns(customers)
    n = len(customers)
    compiled = scorer.offer_proba_columns(columns, n)
    reference = _reference_proba(pipeline, columns, n)
    if not np.isfinite(compiled).all():
        return float("inf")
    return float(np.max(np.abs(compiled - reference)))


def compile_pipeline(
    pipeline: Any, sample_frame: Any, *, tolerance: float = TOLERANCE
) -> tuple[bytes | None, str]:
    """ONNX bytes of a fitted pipeline and why, or ``(None, reason)`` when it cannot be used.

    ``sample_frame`` needs the customer columns (an ``offer`` column is ignored: every row is
    checked with every offer). The bytes are returned only if onnxruntime reproduces the
    pipeline's probabilities on those rows within ``tolerance``.
    """
    family = type(pipeline.steps[-1][1]).__name__ if hasattr(pipeline, "steps") else type(pipeline).__name__
    if len(sample_frame) == 0:
        return None, "no rows to check the compiled model against"
    try:
        onnx_bytes = to_onnx(pipeline)
    except Exception as exc:  # any converter failure means "serve from skops", with the reason
        return None, f"{family} does not convert to ONNX: {type(exc).__name__}: {_short(exc)}"
    try:
        gap = parity_gap(CompiledScorer(onnx_bytes), pipeline, sample_frame)
    except Exception as exc:
        return None, f"{family}: the ONNX model does not run: {type(exc).__name__}: {_short(exc)}"
    checked = f"{len(sample_frame)} rows x {len(OFFERS)} offers"
    if not gap <= tolerance:
        return None, f"{family}: ONNX probabilities differ from the pipeline's by {gap:.3g} (> {tolerance:g}) on {checked}"
    return onnx_bytes, f"{family}: compiled; max |dP| = {gap:.3g} on {checked}"


def save_compiled(pipeline: Any, directory: Path | str, sample_frame: Any) -> tuple[Path | None, str]:
    """Compile and write ``directory/model.onnx`` atomically; ``(None, reason)`` when not compiled.

    A stale ``model.onnx`` from an earlier model is removed when this one does not compile.
    """
    from factory_tasks.core.atomic import write_atomic

    target = Path(directory) / ONNX_FILENAME
    onnx_bytes, reason = compile_pipeline(pipeline, sample_frame)
    if onnx_bytes is None:
        target.unlink(missing_ok=True)
        log.info("not compiled: %s", reason)
        return None, reason
    write_atomic(target, onnx_bytes)
    log.info("wrote %s (%d bytes): %s", target, len(onnx_bytes), reason)
    return target, reason


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return shorten(text, limit)
