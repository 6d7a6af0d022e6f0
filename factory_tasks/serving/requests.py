"""The request contract of the next-best-offer endpoint (``docs/deploy.md``): one customer
object, or ``{"customers": [...]}``, checked field by field.

:func:`parse_request` turns a request into a :class:`CustomerBatch` (one numpy array per
customer column) or raises :class:`RequestError` naming the first field that is wrong
(``history`` for a single customer, ``customers[3].history`` in a batch);
:func:`error_response` is the contract's answer for it. Everything here runs on the hot path:
no imports, no file reads.
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from factory_tasks.core.names import (
    CHALLENGER_SHARE_ENV,
    EXPLORATION_EPSILON_ENV,
    POLICY_SEED_ENV,
    POLICY_TEST_ID_ENV,
)
from factory_tasks.core.schema import CHANNELS, CUSTOMER_COLUMNS, ZIP_CODES
from factory_tasks.core.text import shorten

#: customers per request
MAX_CUSTOMERS = 1000
#: recency is whole months since the last purchase, as in the training data (1..12)
RECENCY_MIN, RECENCY_MAX = 1, 12
#: past spend: >= 0; the upper bound only keeps values finite in float32 (the compiled model)
HISTORY_MAX = 1e9
CUSTOMER_ID_MAX_LENGTH = 256
CATEGORIES: dict[str, tuple[str, ...]] = {"zip_code": ZIP_CODES, "channel": CHANNELS}
CUSTOMER_FIELDS: tuple[str, ...] = ("customer_id", *CUSTOMER_COLUMNS)
_DECIDED = "decided by the endpoint's policy, never sent"
#: fields of the answer and settings of the policy that a request may not send, and why
POLICY_FIELDS: dict[str, str] = {
    "arm": f"the arm is {_DECIDED}: a hash of customer_id (sticky), or a random draw without one",
    "offer": f"the offer made is {_DECIDED}",
    "explored": f"exploration is {_DECIDED}",
    "propensity": f"the propensity is {_DECIDED}",
    "offer_propensities": f"the propensities are {_DECIDED}",
    "next_best_offer": "the next best offer is the endpoint's answer, never sent",
    "model_version": "the deciding model is the endpoint's answer (its arm), never sent",
    "epsilon": f"exploration is set by the deployment ({EXPLORATION_EPSILON_ENV}), not per request",
    "challenger_share": f"the challenger's share is set by the deployment ({CHALLENGER_SHARE_ENV}), not per request",
    "test_id": f"the test id is set by the deployment ({POLICY_TEST_ID_ENV}), not per request",
    "seed": f"the random generator is seeded by the deployment ({POLICY_SEED_ENV}), not per request",
}

#: the request ``build_check()`` answers before a replica is ready (the example of docs/deploy.md)
EXAMPLE_REQUEST: dict[str, Any] = {
    "customers": [
        {"customer_id": "build-check", "recency": 6, "history": 250.0, "used_discount": 1,
         "used_bogo": 0, "zip_code": "Urban", "is_referral": 0, "channel": "Web"}
    ]
}


class RequestError(ValueError):
    """A request that does not satisfy the contract: ``field`` (e.g. ``customers[3].history``)
    and what is wrong with it."""

    def __init__(self, field: str | None, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)


def error_response(field: str | None, message: str) -> dict[str, Any]:
    """The contract's error answer."""
    return {"error": {"field": field, "message": message}}


@dataclass(frozen=True)
class CustomerBatch:
    """Validated customers: one numpy array per customer column, in request order."""

    customer_ids: list[str | None]
    columns: dict[str, np.ndarray]

    @property
    def n(self) -> int:
        return len(self.customer_ids)


def _show(value: Any) -> str:
    """A value as the client sent it (JSON where possible), shortened."""
    try:
        text = json.dumps(value, allow_nan=True)
    except (TypeError, ValueError):
        try:
            text = repr(value)
        except ValueError:  # e.g. an int past Python's digit limit for str()
            text = f"<a {type(value).__name__} too large to show>"
    return shorten(text, 60)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "a list"
    return type(value).__name__


def _where(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _recency(value: Any, where: str) -> int:
    if type(value) is not int:  # bool is a subclass of int: refused too
        raise RequestError(
            where, f"must be a whole number of months ({RECENCY_MIN} to {RECENCY_MAX}), got {_kind(value)} ({_show(value)})"
        )
    if not RECENCY_MIN <= value <= RECENCY_MAX:
        raise RequestError(
            where, f"must be between {RECENCY_MIN} and {RECENCY_MAX} (months since the last purchase), got {_show(value)}"
        )
    return value


def _flag(value: Any, where: str) -> int:
    if type(value) is not int or value not in (0, 1):
        raise RequestError(where, f"must be 0 or 1, got {_kind(value)} ({_show(value)})")
    return value


def _history(value: Any, where: str) -> float:
    if type(value) not in (int, float):
        raise RequestError(where, f"must be a number (past spend), got {_kind(value)} ({_show(value)})")
    if isinstance(value, float) and not math.isfinite(value):
        raise RequestError(where, f"must be a finite number, got {_show(value)}")
    if value < 0:
        raise RequestError(where, f"must be >= 0 (past spend), got {_show(value)}")
    if value > HISTORY_MAX:
        raise RequestError(where, f"must be <= {HISTORY_MAX:.0f} (past spend), got {_show(value)}")
    return float(value)


def _category(value: Any, where: str, name: str) -> str:
    valid = CATEGORIES[name]
    if not isinstance(value, str):
        raise RequestError(where, f"must be one of {', '.join(map(repr, valid))}, got {_kind(value)} ({_show(value)})")
    if value not in valid:
        close = difflib.get_close_matches(value, valid, n=1, cutoff=0.6)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise RequestError(where, f"unknown {name} {value[:60]!r}; valid: {', '.join(map(repr, valid))}.{hint}")
    return value


def _customer_id(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise RequestError(where, f"must be a string (send ids as text), got {_kind(value)} ({_show(value)})")
    if not 1 <= len(value) <= CUSTOMER_ID_MAX_LENGTH:
        raise RequestError(where, f"must be 1 to {CUSTOMER_ID_MAX_LENGTH} characters long, has {len(value)}")
    if value != value.strip():
        raise RequestError(where, f"must not start or end with whitespace, got {_show(value)}: the customer's "
                                  "arm is a hash of the exact id, so a padded id would be another customer")
    return value


#: each customer column and its check, in the order problems are reported
_CHECKS: tuple[tuple[str, Callable[[Any, str], Any]], ...] = (
    ("recency", _recency),
    ("history", _history),
    ("used_discount", _flag),
    ("used_bogo", _flag),
    ("zip_code", lambda value, where: _category(value, where, "zip_code")),
    ("is_referral", _flag),
    ("channel", lambda value, where: _category(value, where, "channel")),
)


def _check_customer(customer: Any, prefix: str, single: bool) -> tuple[str | None, tuple]:
    """One customer's id and its values in _CHECKS order, or a RequestError naming the
    first problem: not an object, an unknown field, then each field in order (missing or wrong)."""
    if not isinstance(customer, Mapping):
        raise RequestError(prefix or "request", f"must be an object (one customer), got {_kind(customer)}")
    for name in customer:
        if name in POLICY_FIELDS:
            raise RequestError(
                _where(prefix, str(name)),
                f"unknown field: {POLICY_FIELDS[name]}. A customer has {', '.join(CUSTOMER_FIELDS)} "
                "(customer_id optional).",
            )
        if name not in CUSTOMER_FIELDS:
            close = difflib.get_close_matches(str(name), CUSTOMER_FIELDS, n=1, cutoff=0.6)
            did = f" Did you mean {close[0]!r}?" if close else ""
            hint = " A request is one customer object or {\"customers\": [...]}." if single else ""
            raise RequestError(
                _where(prefix, str(name)),
                f"unknown field.{did} A customer has {', '.join(CUSTOMER_FIELDS)} (customer_id optional).{hint}",
            )
    row = []
    for name, check in _CHECKS:
        where = _where(prefix, name)
        if name not in customer:
            raise RequestError(where, "is required")
        row.append(check(customer[name], where))
    customer_id = customer.get("customer_id")
    if "customer_id" in customer:
        customer_id = _customer_id(customer_id, _where(prefix, "customer_id"))
    return customer_id, tuple(row)


_COLUMN_DTYPES: dict[str, Any] = {
    "recency": np.int64, "history": np.float64, "used_discount": np.int64, "used_bogo": np.int64,
    "zip_code": object, "is_referral": np.int64, "channel": object,
}


def parse_request(request: Any) -> CustomerBatch:
    """Validate a model-service request: one customer object, or ``{"customers": [...]}``.

    Raises :class:`RequestError` for the first problem, naming the field (``history`` for a
    single customer, ``customers[3].history`` in a batch).
    """
    if not isinstance(request, Mapping):
        raise RequestError(
            "request",
            f"must be a JSON object: one customer, or {{\"customers\": [...]}}; got {_kind(request)}",
        )
    if "customers" in request:
        for name in request:
            if name != "customers":
                why = f" ({POLICY_FIELDS[name]})" if name in POLICY_FIELDS else ""
                raise RequestError(str(name), f"unknown field: a batch request has only \"customers\"{why}")
        customers = request["customers"]
        if not isinstance(customers, (list, tuple)):
            raise RequestError("customers", f"must be a list of customer objects, got {_kind(customers)}")
        if not customers:
            raise RequestError("customers", "must hold at least 1 customer")
        if len(customers) > MAX_CUSTOMERS:
            raise RequestError(
                "customers",
                f"holds {len(customers)} customers; at most {MAX_CUSTOMERS} per request: split the batch",
            )
        checked = [_check_customer(c, f"customers[{i}]", False) for i, c in enumerate(customers)]
    else:
        checked = [_check_customer(request, "", True)]
    ids = [customer_id for customer_id, _ in checked]
    values = list(zip(*(row for _, row in checked)))
    columns = {
        name: np.array(values[j], dtype=_COLUMN_DTYPES[name]) for j, (name, _) in enumerate(_CHECKS)
    }
    return CustomerBatch(ids, columns)
