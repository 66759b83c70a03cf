"""Checks a fits dict (or any part of it) against its shape in tasks.fit.entries, so that the
documented layout and the written one cannot drift apart."""

import types
from typing import Literal, Union, get_args, get_origin, get_type_hints, is_typeddict


def check_shape(value, hint, where: str = "fits") -> None:
    """AssertionError naming the first place where `value` does not match the type `hint`: a key
    missing or not documented, or a value of another type."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is type(None):
        assert value is None, f"{where}: {value!r} is not null"
    elif origin in (Union, types.UnionType):
        errors = []
        for option in args:
            try:
                check_shape(value, option, where)
                return
            except AssertionError as err:
                errors.append(str(err))
        raise AssertionError(f"{where}: matches none of {hint}: " + "; ".join(errors))
    elif origin is Literal:
        assert value in args, f"{where}: {value!r} is not one of {args}"
    elif origin is list:
        assert isinstance(value, list), f"{where}: {type(value).__name__} is not a list"
        for i, item in enumerate(value):
            check_shape(item, args[0], f"{where}[{i}]")
    elif hint is dict or origin is dict:
        assert isinstance(value, dict), f"{where}: {type(value).__name__} is not a dict"
        for key, item in value.items() if args else ():
            check_shape(item, args[1], f"{where}.{key}")
    elif is_typeddict(hint):
        assert isinstance(value, dict), f"{where}: {type(value).__name__} is not a {hint.__name__}"
        fields = get_type_hints(hint)
        assert set(value) <= set(fields), f"{where}: {sorted(set(value) - set(fields))} not in {hint.__name__}"
        assert hint.__required_keys__ <= set(value), f"{where}: lacks {sorted(hint.__required_keys__ - set(value))}"
        for key, item in value.items():
            check_shape(item, fields[key], f"{where}.{key}")
    elif hint in (int, float):  # JSON has one kind of number; a bool is not one
        assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{where}: {value!r} is not a number"
        assert hint is float or isinstance(value, int), f"{where}: {value!r} is not an integer"
    else:
        assert isinstance(value, hint), f"{where}: {value!r} is not a {hint}"


def keys_of(value) -> set[str]:
    """Every dict key anywhere in a fits dict."""
    if isinstance(value, dict):
        return set(value).union(*(keys_of(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(keys_of(v) for v in value))
    return set()
