"""Graded exercises (nbgrader) that never stop Run All, and hidden tests that an answer cannot pass
by delegating to the library or by hard-coding the visible case.

A lesson's exercise has three cells (see ``TEACHING.md`` and ``course/examples/``):

* the **answer** cell (nbgrader solution cell): a function whose body sits between
  ``### BEGIN SOLUTION`` / ``### END SOLUTION``; the student release has ``raise NotImplementedError()``;
* the **call site**, where the lesson uses the answer and goes on whatever happens::

      bg = grading.attempt(background_score, background_power, cams, 4.0)

  :func:`attempt` returns the student's result when it agrees with the library's, and otherwise says
  what happened and returns the library's result;
* the **test** cell (nbgrader autograded cell with points)::

      with grading.tests("background_score"):
          assert ...                                    # visible tests: shape, dtype, a case by hand
          ### BEGIN HIDDEN TESTS
          grading.check_against(background_score, background_power, cases,
                                forbid=["wsss_core.cams.background_power"])
          ### END HIDDEN TESTS

  A failing test is reported on **stderr** instead of raising: the cell completes (Jupyter's Run All
  and papermill go on) and nbgrader, which gives 0 to a test cell with an error *or any stderr
  output*, scores it 0 all the same.

:func:`forbid` makes library functions unusable while the hidden tests call the answer; fresh random
cases (:func:`fresh_rng`) defeat a hard-coded answer.

CI runs of the *instructor* notebooks set ``WSSS_STRICT_TESTS=1`` (:func:`strict`): then a failing test or a
solution that disagrees with the library raises, so a broken exercise fails the run instead of printing.

This module is the whole grading runtime a student's kernel needs; it holds no solution.
(It cannot stop a student who deliberately patches it from their own cells — nbgrader's in-kernel
grading never can; the instructor reads the submissions' answer cells in the feedback.)
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import os
import sys
import traceback
import types
import warnings
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

__all__ = ["DelegationError", "forbid", "attempt", "tests", "check_against", "fresh_rng", "seed_of", "same", "strict"]


class DelegationError(RuntimeError):
    """Raised by a library function that :func:`forbid` made unavailable."""


# --------------------------------------------------------------------------------------------------
# comparing results
# --------------------------------------------------------------------------------------------------
def _as_array(x):
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def same(got, want, atol: float = 1e-5, rtol: float = 1e-4) -> bool:
    """``got`` agrees with ``want``: same structure (tuples/lists/dicts), same shapes, close values
    (NaN equal to NaN). A numpy array and a torch tensor with the same values agree."""
    if isinstance(want, dict):
        return isinstance(got, dict) and got.keys() == want.keys() and all(
            same(got[k], want[k], atol, rtol) for k in want)
    if isinstance(want, (tuple, list)):
        return isinstance(got, (tuple, list)) and len(got) == len(want) and all(
            same(g, w, atol, rtol) for g, w in zip(got, want))
    try:
        a, b = _as_array(got), _as_array(want)
    except Exception:
        return False
    if a.shape != b.shape:
        return False
    if a.dtype.kind in "biu" and b.dtype.kind in "biu":
        return bool(np.array_equal(a, b))
    try:
        return bool(np.allclose(a.astype(np.float64), b.astype(np.float64), atol=atol, rtol=rtol, equal_nan=True))
    except (TypeError, ValueError):
        return bool(np.array_equal(a, b))


def _describe(x, limit: int = 200) -> str:
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        head = f"{type(x).__name__} shape={tuple(x.shape)} dtype={x.dtype}"
    else:
        head = type(x).__name__
    body = repr(x)
    if len(body) > limit:
        body = body[:limit] + " …"
    return f"{head}: {body}"


# --------------------------------------------------------------------------------------------------
# forbid: library functions unavailable while a hidden test calls the answer
# --------------------------------------------------------------------------------------------------
def _resolve(path: str) -> tuple[Any, str, Any]:
    """``"pkg.mod.Class.attr"`` → (owner object, attribute name, value); the longest importable
    module prefix is imported."""
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            owner = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:-1]:
            owner = getattr(owner, name)
        return owner, parts[-1], getattr(owner, parts[-1])
    raise ImportError(f"forbid: cannot import any module prefix of {path!r}")


def _raiser_code(path: str, nfree: int) -> types.CodeType:
    """The code object of ``def f(*args, **kwargs): raise DelegationError(...)`` with ``nfree`` free
    variables, so that it can replace the ``__code__`` of a function with a closure of that size."""
    free = [f"_f{i}" for i in range(nfree)]
    msg = (f"{path} is not available while this exercise is graded: write the computation yourself "
           f"(torch / numpy operations), do not call the library function it asks you to re-implement")
    body = (f"def _outer():\n"
            + "".join(f"    {v} = None\n" for v in free)
            + "    def _forbidden(*args, **kwargs):\n"
            + f"        raise __import__('wsss_core.grading', fromlist=['_']).DelegationError({msg!r})\n"
            + (f"        ({', '.join(free)},)\n" if free else "")
            + "    return _forbidden\n")
    ns: dict = {}
    exec(compile(body, f"<forbidden {path}>", "exec"), ns)
    return ns["_outer"]().__code__


def _forbidden_callable(path: str) -> Callable:
    def _forbidden(*args, **kwargs):
        raise DelegationError(f"{path} is not available while this exercise is graded: write the "
                              f"computation yourself, do not call the library function")
    return _forbidden


@contextlib.contextmanager
def forbid(*paths: str) -> Iterator[None]:
    """Make the library functions named by dotted ``paths`` raise :class:`DelegationError` inside the
    ``with`` block; everything is restored afterwards, also on error.

    A Python function (or a method or property: ``"wsss_core.metrics.ConfusionMatrix.miou"``) has its
    code swapped, so every reference to it fails: ``from wsss_core.cams import background_power`` done earlier, an
    alias ``bp = background_power``, a call through another library function. Anything else (a builtin,
    a torch function) is replaced by name in its owner and in every loaded module that holds it.
    """
    code_swaps: list[tuple[Callable, types.CodeType]] = []
    attr_swaps: list[tuple[Any, str, Any]] = []
    try:
        for path in paths:
            owner, name, obj = _resolve(path)
            raw = inspect.getattr_static(owner, name)
            if isinstance(raw, property):
                raw = raw.fget
            elif isinstance(raw, (classmethod, staticmethod)):
                raw = raw.__func__
            fn = inspect.unwrap(raw) if callable(raw) else raw
            fn = getattr(fn, "__func__", fn)  # a bound method
            if isinstance(fn, types.FunctionType):
                nfree = len(fn.__code__.co_freevars)
                code_swaps.append((fn, fn.__code__))
                fn.__code__ = _raiser_code(path, nfree)
                continue
            stub = _forbidden_callable(path)
            holders = [owner] + [m for m in list(sys.modules.values()) if isinstance(m, types.ModuleType)]
            for holder in holders:
                for attr, value in list(getattr(holder, "__dict__", {}).items()):
                    if value is obj:
                        try:
                            setattr(holder, attr, stub)
                        except (AttributeError, TypeError):
                            continue
                        attr_swaps.append((holder, attr, obj))
        yield
    finally:
        for fn, code in reversed(code_swaps):
            fn.__code__ = code
        for holder, attr, obj in reversed(attr_swaps):
            setattr(holder, attr, obj)


# --------------------------------------------------------------------------------------------------
# the call site: the lesson goes on with the library's result
# --------------------------------------------------------------------------------------------------
def attempt(student_fn: Callable, library_fn: Callable, *args, compare: Callable | None = None, **kwargs):
    """Run the student's function on the lesson's input and return its result if it agrees with the
    library's; otherwise print what happened and return the library's result, so that the lesson
    goes on (an unsolved or wrong answer never stops Run All). ``compare(got, want)`` defaults to
    :func:`same`. (The name ``compare`` is reserved; pass other arguments positionally or by name.)"""
    if strict():  # an instructor copy in CI: the solution must run and agree
        got, want = student_fn(*args, **kwargs), library_fn(*args, **kwargs)
        if not (compare or same)(got, want):
            raise AssertionError(f"{getattr(student_fn, '__name__', student_fn)} differs from the library: "
                                 f"{_describe(got)} vs {_describe(want)}")
        return got
    name = getattr(student_fn, "__name__", "your function")
    lib = getattr(library_fn, "__qualname__", getattr(library_fn, "__name__", "the library"))
    want = library_fn(*args, **kwargs)
    try:
        got = student_fn(*args, **kwargs)
    except NotImplementedError:
        print(f"[{name}] not implemented yet: the lesson goes on with the library's result ({lib}). "
              f"Write your answer in the exercise cell and run it again.")
        return want
    except Exception as err:  # noqa: BLE001 — any error of the student's code
        print(f"[{name}] raised {type(err).__name__}: {err}\n"
              f"  the lesson goes on with the library's result ({lib}).")
        return want
    if not (compare or same)(got, want):
        print(f"[{name}] differs from the library on the lesson's input:\n  yours:   {_describe(got)}\n"
              f"  library: {_describe(want)}\n  the lesson goes on with the library's result ({lib}).")
        return want
    print(f"[{name}] ✓ agrees with {lib} on the lesson's input; the lesson uses your result.")
    return got


# --------------------------------------------------------------------------------------------------
# the autograded test cell
# --------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def tests(name: str) -> Iterator[None]:
    """Wrap an autograded test cell's body. Success: prints a ✓ line on stdout. Failure (any
    exception: a failed assert, ``NotImplementedError``, :class:`DelegationError`): the message and
    the failing line go to **stderr** and the exception is swallowed, so the cell completes; nbgrader
    gives 0 points to a test cell with stderr output. Warnings and stderr written by the code under
    test are captured and shown on stdout, so that they do not cost a correct answer its points."""
    captured = io.StringIO()
    failure: BaseException | None = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with contextlib.redirect_stderr(captured):
                yield
        except Exception as err:  # noqa: BLE001
            failure = err
    noise = captured.getvalue() + "".join(f"warning: {w.category.__name__}: {w.message}\n" for w in caught)
    if noise.strip():
        print(f"[{name}] (messages while testing)\n{noise.rstrip()}")
    if failure is None:
        print(f"[{name}] ✓ the tests in this cell pass")
        return
    tb = traceback.extract_tb(failure.__traceback__)
    cells = [f for f in tb if f.line and ("ipykernel" in f.filename or f.filename.startswith("<ipython"))]
    where = cells[-1] if cells else (tb[-1] if tb else None)
    line = f"\n  at: {where.line}" if where is not None and where.line else ""
    why = str(failure) or "(no message)"
    if isinstance(failure, NotImplementedError):
        why = "not implemented yet"
    print(f"✗ [{name}] {type(failure).__name__}: {why}{line}\n"
          f"  this exercise scores 0 points when graded; the lesson goes on.", file=sys.stderr)
    if strict():
        raise failure


def strict() -> bool:
    """``WSSS_STRICT_TESTS=1`` (for CI runs of the *instructor* notebooks): :func:`tests` and :func:`attempt`
    raise instead of reporting and going on, so that a broken solution or test fails the run."""
    return os.environ.get("WSSS_STRICT_TESTS", "") == "1"


def check_against(student_fn: Callable, library_fn: Callable, cases: Iterable, *, forbid: Sequence[str] = (),
                  compare: Callable | None = None, seed: int | None = None) -> None:
    """Hidden-test helper: for each case (a tuple of positional arguments, or ``(args, kwargs)`` with a
    dict as its second item), compute the library's answer first, then call ``student_fn`` with the
    library functions ``forbid`` unavailable; raise ``AssertionError`` naming the first case that differs.
    ``seed`` (from :func:`fresh_rng`) is quoted in the message so a failure can be reproduced."""
    cases = list(cases)
    assert cases, "check_against: no cases"
    for k, case in enumerate(cases):
        if isinstance(case, tuple) and len(case) == 2 and isinstance(case[1], dict) and isinstance(case[0], tuple):
            args, kwargs = case
        else:
            args, kwargs = (case if isinstance(case, tuple) else (case,)), {}
        want = library_fn(*args, **kwargs)
        with globals()["forbid"](*forbid):
            got = student_fn(*args, **kwargs)
        if not (compare or same)(got, want):
            at = f" (seed {seed})" if seed is not None else ""
            raise AssertionError(f"random case {k}{at}: got {_describe(got)}, the library gives {_describe(want)}")


def fresh_rng() -> np.random.Generator:
    """A numpy generator seeded from the OS: fresh cases every run, so no hard-coded answer passes.
    Its seed, for :func:`check_against`'s messages, is :func:`seed_of` (rng)."""
    return np.random.default_rng(int.from_bytes(os.urandom(4), "little"))


def seed_of(rng: np.random.Generator) -> int:
    """The seed :func:`fresh_rng` drew (``np.random.default_rng(seed_of(rng))`` replays the cases)."""
    return int(rng.bit_generator.seed_seq.entropy)
