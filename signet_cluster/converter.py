"""The one cattrs converter for cluster messages (never the global one).

Peer messages tolerate unknown keys, so newer sidecars can add fields; settings use a strict
converter (see settings.py) so typos fail. Structuring errors become one readable line per
problem, which the sidecar returns as a 400 and the CLI prints.
"""

from __future__ import annotations

import json
import math
from typing import Any, TypeVar, cast

import attrs
import cattrs
from cattrs.errors import ClassValidationError, IterableValidationError
from cattrs.preconf.json import make_converter

from signet_cluster.errors import ValidationFailed

T = TypeVar("T")

converter = make_converter(forbid_extra_keys=False, omit_if_default=False)


def _strict_str(value: object, _type: object) -> str:
    # cattrs would happily turn 5 into "5"; on the wire a wrong type is an error.
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _strict_int(value: object, _type: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


def _strict_float(value: object, _type: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    # json.loads accepts NaN and Infinity: a NaN passes every range check and breaks every
    # comparison (newest-wins merges, ages), and browsers cannot parse it back.
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {value!r}")
    return float(value)


def _strict_bool(value: object, _type: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {type(value).__name__}")
    return value


converter.register_structure_hook(str, _strict_str)
converter.register_structure_hook(int, _strict_int)
converter.register_structure_hook(float, _strict_float)
converter.register_structure_hook(bool, _strict_bool)


def _describe(exc: BaseException, _type: Any) -> str:
    if isinstance(exc, KeyError):
        return "required field missing"
    if isinstance(exc, TypeError | ValueError) and str(exc):
        return str(exc)
    return f"invalid value ({type(exc).__name__})"


def problems_of(exc: BaseException, path: str = "body") -> list[str]:
    """Readable problems from a structuring failure, one per offending field."""
    if isinstance(exc, ClassValidationError | IterableValidationError):
        return cattrs.transform_error(exc, path=path, format_exception=_describe)
    return [str(exc)]


def validation_problems(obj: object, path: str = "body") -> list[str]:
    """Run every attrs validator of `obj` and its nested messages, collecting all failures
    (attrs itself stops at the first one)."""
    problems: list[str] = []
    fields = _attrs_fields(obj)
    if fields is not None:
        for field in fields:
            value = getattr(obj, field.name)
            if field.validator is not None:
                try:
                    field.validator(obj, field, value)
                except (TypeError, ValueError) as exc:
                    # attrs' own validators put the message first in a tuple of details.
                    message = exc.args[0] if exc.args and isinstance(exc.args[0], str) else exc
                    problems.append(f"{message} @ {path}.{field.name}")
            # Only messages and sequences have anything inside to check (this runs for
            # every heartbeat a coordinator receives: no path strings for plain values).
            if _nested(value):
                problems.extend(validation_problems(value, f"{path}.{field.name}"))
    elif isinstance(obj, tuple | list):
        for index, item in enumerate(obj):
            if _nested(item):
                problems.extend(validation_problems(item, f"{path}[{index}]"))
    return problems


def _attrs_fields(value: object) -> tuple[attrs.Attribute[Any], ...] | None:
    # What attrs.has()/attrs.fields() read, without their generic-alias handling: this is
    # called for every field of every heartbeat a coordinator receives.
    return cast(
        "tuple[attrs.Attribute[Any], ...] | None", getattr(type(value), "__attrs_attrs__", None)
    )


def _nested(value: object) -> bool:
    return isinstance(value, tuple | list) or _attrs_fields(value) is not None


def structure(data: Any, cls: type[T], path: str = "body") -> T:
    """Structure `data` into `cls`, raising ValidationFailed with every problem listed."""
    if not isinstance(data, dict):
        raise ValidationFailed([f"{path} must be a JSON object, got {type(data).__name__}"])
    # Validators are switched off while cattrs builds the objects so that type errors and
    # value errors are all collected, then run in one pass below.
    with attrs.validators.disabled():
        try:
            obj = converter.structure(data, cls)
        except (ClassValidationError, IterableValidationError) as exc:
            raise ValidationFailed(problems_of(exc, path)) from None
        except (TypeError, ValueError, KeyError) as exc:
            raise ValidationFailed([f"{exc} @ {path}"]) from None
    problems = validation_problems(obj, path)
    if problems:
        raise ValidationFailed(problems)
    return obj


def structure_json(raw: bytes | str, cls: type[T]) -> T:
    try:
        data = json.loads(raw)
    except RecursionError:
        raise ValidationFailed(["body is nested too deeply"]) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationFailed([f"body is not valid JSON: {exc}"]) from None
    try:
        return structure(data, cls)
    except RecursionError:
        raise ValidationFailed(["body is nested too deeply"]) from None


def unstructure(obj: object) -> Any:
    return converter.unstructure(obj)
