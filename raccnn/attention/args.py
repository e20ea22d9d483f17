"""Whether a block's constructor takes given arguments, read from its signature without calling it.

A block's keyword arguments come from a config (``model.attention.kwargs``), which is checked
before anything is built. The signature gives the names a constructor takes and, through their
defaults, their types. Every integer argument of a block here is a count or a size (a reduction,
a kernel size, heads, a dilation), so it is at least 1. What a block asks of its values beyond
that (what depends on the channels, say) is its module's ``check_args``.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable


def _type_problem(default: Any, value: Any) -> str | None:
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "bool"
    if isinstance(default, int):
        return None if isinstance(value, int) and not isinstance(value, bool) else "int"
    if isinstance(default, float):
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "float"
    return None


def checked_arguments(fn: Callable, *args, **kwargs) -> dict[str, Any]:
    """``fn``'s arguments bound to ``args`` and ``kwargs``, defaults filled in. ValueError when ``fn``
    would refuse them: a name it does not take, a value whose type is not its default's, an integer
    below 1."""
    signature = inspect.signature(fn)
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as e:
        unknown = sorted(key for key in kwargs if key not in signature.parameters)
        raise ValueError(f"bad keyword arguments {unknown or sorted(kwargs)} ({fn.__name__}() {e})") from None
    parameters = signature.parameters
    for key, value in kwargs.items():
        default = parameters[key].default if key in parameters else inspect.Parameter.empty
        if wanted := _type_problem(default, value):
            raise ValueError(f"{key}: expected {wanted}, got {type(value).__name__} {value!r}")
        if type(default) is int and value < 1:
            raise ValueError(f"{key}: {value} is below the minimum 1")
    bound.apply_defaults()
    return dict(bound.arguments)
