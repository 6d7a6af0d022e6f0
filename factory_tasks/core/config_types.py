"""The value types config files and contracts share: a strict, closed pydantic base, the
resource request and offer economics of an experiment, hyperparameter values, and names that
must be in the estimator and metric registries. Each validator reports every problem with its
key path (several per validator, merged into pydantic's own errors), so a grid or loop config
error names the file, the key and what is wrong."""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Callable

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from factory_tasks.core.estimators import ESTIMATORS, get_estimator
from factory_tasks.core.metrics import get_metric
from factory_tasks.core.schema import OFFERS

Loc = tuple[str | int, ...]

Problem = tuple[Loc, str]

ParamValue = StrictBool | StrictInt | StrictFloat | StrictStr | None


def short_name(name: Any, limit: int = 40) -> str:
    """A key of a config file as error messages quote it: at most ``limit`` characters, control
    characters escaped (``repr``), so a stray line of some other file is never echoed whole."""
    text = str(name)
    return repr(text if len(text) <= limit else text[:limit] + "...")


def suggest(name: str, valid: list[str] | set[str], *, list_all: bool = True) -> str:
    """' Did you mean ...?' from difflib, else (optionally) the valid names."""
    close = difflib.get_close_matches(str(name), sorted(valid), n=3, cutoff=0.6)
    if close:
        return " Did you mean " + " or ".join(repr(c) for c in close) + "?"
    return f" Valid: {', '.join(sorted(valid))}." if list_all else ""


def validation_error(problems: list[Problem], errors: Sequence[Mapping[str, Any]] = ()) -> ValidationError | None:
    """One pydantic ValidationError carrying pydantic ``errors`` plus our ``problems``, if any.

    A ValidationError raised inside a validator is merged into the enclosing one with each
    error's path, which is how one validator reports several problems at once.
    """
    details = [InitErrorDetails(type=PydanticCustomError(e["type"], e["msg"]), loc=e["loc"], input=e.get("input"))
               for e in errors]
    details += [InitErrorDetails(type=PydanticCustomError("grid", msg), loc=loc, input=None) for loc, msg in problems]
    return ValidationError.from_exception_data("grid", details) if details else None


def raise_problems(problems: list[Problem], errors: Sequence[Mapping[str, Any]] = ()) -> None:
    error = validation_error(problems, errors)
    if error is not None:
        raise error


def validate_collecting(handler: Callable[[Any], Any], value: Any, problems: list[Problem]) -> Any:
    """Run pydantic's own validation and raise its errors together with ``problems``."""
    try:
        result = handler(value)
    except ValidationError as exc:
        raise validation_error(problems, exc.errors()) from None
    raise_problems(problems)
    return result


class StrictModel(BaseModel):
    """Strict (no "5" for 5), closed (unknown keys are errors) and immutable."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    @model_validator(mode="wrap")
    @classmethod
    def _explain_unknown_keys(cls, data: Any, handler: Callable[[Any], Any]) -> Any:
        """Replace pydantic's "Extra inputs are not permitted" with the close matches and valid keys."""
        try:
            return handler(data)
        except ValidationError as exc:
            errors = exc.errors()
            unknown = [e["loc"] for e in errors if e["type"] == "extra_forbidden" and len(e["loc"]) == 1]
            if not unknown:
                raise
            valid = sorted(cls.model_fields)
            raise validation_error(
                [(loc, f"unknown key {short_name(loc[0])}.{suggest(loc[0], valid, list_all=False)} "
                       f"Valid keys here: {', '.join(valid)}.") for loc in unknown],
                [e for e in errors if e["loc"] not in unknown],
            ) from None


def _known_metric(name: str) -> str:
    try:
        get_metric(name)
    except ValueError as exc:
        raise PydanticCustomError("grid", str(exc)) from None
    return name


def _known_estimator(name: str) -> str:
    try:
        get_estimator(name)
    except ValueError as exc:
        raise PydanticCustomError("grid", str(exc) + suggest(name, set(ESTIMATORS), list_all=False)) from None
    return name


MetricName = Annotated[str, AfterValidator(_known_metric)]

EstimatorName = Annotated[str, AfterValidator(_known_estimator)]

PositiveNumber = Annotated[float, Field(gt=0, allow_inf_nan=False)]

NonNegativeNumber = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class Resources(StrictModel):
    """CPU and memory requested for each experiment's job run."""

    cpu: PositiveNumber
    memory_gb: PositiveNumber


class Economics(StrictModel):
    """Value of a conversion and cost of each offer; the next best action maximises their balance."""

    conversion_value: PositiveNumber
    offer_costs: dict[str, NonNegativeNumber]

    @field_validator("offer_costs", mode="wrap")
    @classmethod
    def _exactly_the_offers(cls, value: Any, handler: Callable[[Any], Any]) -> dict[str, float]:
        problems: list[Problem] = []
        if isinstance(value, Mapping):
            for name in value:
                if name not in OFFERS:
                    problems.append(((name,), f"unknown offer {short_name(name)}.{suggest(name, set(OFFERS))}"))
            missing = [o for o in OFFERS if o not in value]
            if missing:
                problems.append(((), f"missing a cost for {', '.join(map(repr, missing))}: give one for each of "
                                     f"{', '.join(map(repr, OFFERS))} (0 is fine)"))
        costs = validate_collecting(handler, value, problems)
        return {offer: costs[offer] for offer in OFFERS}
