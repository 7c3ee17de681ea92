"""Exercises for the notebooks: a stub the student fills in, and a check against the library.

In a notebook::

    def tight_box(mask):
        "Return (x1, y1, x2, y2) ..."
        raise NotImplementedError            # ← the student's work

    exercises.check("tight_box", tight_box, use_solution=USE_SOLUTIONS)

``check`` runs the exercise's test cases against the library's reference implementation:

* an implemented function is checked case by case and the result printed (an ``AssertionError``
  names the first failing case);
* a stub that still raises ``NotImplementedError`` prints a reminder — unless ``use_solution`` is
  True (instructors, and the CI runs), in which case the *instructor solution* from
  :mod:`wsss_core.exercises.solutions` is checked instead, so CI proves every solution correct.

Solutions live in :mod:`wsss_core.exercises.solutions`, never in the student's notebook.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

_REGISTRY: dict[str, "Exercise"] = {}


@dataclass
class Exercise:
    name: str
    cases: Callable[[], list[tuple[tuple, dict]]]  # () -> [(args, kwargs), ...]
    reference: Callable[..., Any]  # the library function the answer must agree with
    compare: Callable[[Any, Any], bool]
    hint: str = ""


def register(name: str, cases, reference, compare=None, hint: str = "") -> None:
    _REGISTRY[name] = Exercise(name, cases, reference, compare or _allclose, hint)


def _allclose(a, b) -> bool:
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_allclose(x, y) for x, y in zip(a, b))
    a = a.detach().cpu().numpy() if hasattr(a, "detach") else a
    b = b.detach().cpu().numpy() if hasattr(b, "detach") else b
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and bool(np.allclose(a, b, atol=1e-5, rtol=1e-4, equal_nan=True))


def _load_all() -> None:
    """Import every module that registers exercises: ``library`` (notebooks 00-01) and ``nbNN``
    (one per later notebook, e.g. ``nb02``), so that notebooks can be written in parallel."""
    import importlib
    import pkgutil

    from . import library  # noqa: F401

    for m in pkgutil.iter_modules(__path__):
        if m.name.startswith("nb"):
            importlib.import_module(f"{__name__}.{m.name}")


def exercise(name: str) -> Exercise:
    _load_all()
    if name not in _REGISTRY:
        raise KeyError(f"no exercise named {name!r}; known: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def solution(name: str) -> Callable:
    """The instructor solution (for instructors; students should not need it): looked up in
    ``solutions`` and then in the per-notebook ``solutions_nbNN`` modules."""
    import importlib
    import pkgutil

    from . import solutions

    if hasattr(solutions, name):
        return getattr(solutions, name)
    for m in pkgutil.iter_modules(__path__):
        if m.name.startswith("solutions_nb"):
            mod = importlib.import_module(f"{__name__}.{m.name}")
            if hasattr(mod, name):
                return getattr(mod, name)
    raise KeyError(f"no instructor solution for exercise {name!r}")


def check(name: str, fn: Callable, use_solution: bool = False, verbose: bool = True) -> bool:
    """Check ``fn`` against the library on the exercise's cases; see the module docstring.

    Returns True if the checked function passed, False if the stub is not implemented yet
    (and ``use_solution`` is False). Raises ``AssertionError`` on a wrong answer.
    """
    ex = exercise(name)
    cases = ex.cases()
    who = "your function"
    try:
        got0 = fn(*cases[0][0], **cases[0][1])
    except NotImplementedError:
        if not use_solution:
            if verbose:
                print(f"[{name}] not implemented yet: replace the `raise NotImplementedError` with your code "
                      f"and run this cell again. {ex.hint}")
            return False
        fn = solution(name)
        who = "the instructor solution"
        got0 = fn(*cases[0][0], **cases[0][1])
    for k, (args, kwargs) in enumerate(cases):
        got = got0 if k == 0 else fn(*args, **kwargs)
        want = ex.reference(*args, **kwargs)
        if not ex.compare(got, want):
            raise AssertionError(f"[{name}] case {k}: {who} returned\n{got}\nbut the library gives\n{want}")
    if verbose:
        print(f"[{name}] ✓ {who} agrees with the library on {len(cases)} cases")
    return True
