"""wsss_core.grading: the runtime of graded exercises (forbid, attempt, tests, check_against) — fast, no
nbgrader needed. The nbgrader pipeline itself is tests/test_course.py."""
from __future__ import annotations

import sys
import types
import warnings

import numpy as np
import pytest
import torch

from wsss_core import grading
from wsss_core.cams import background_power, with_background
from wsss_core.metrics import ConfusionMatrix


def _bg(cams, alpha):
    return (1.0 - cams.amax(dim=0)) ** alpha


def test_forbid_reaches_every_reference_and_restores():
    import wsss_core.cams as C

    alias = background_power
    x = torch.rand(3, 4, 5)
    want = background_power(x, 2.0)
    with grading.forbid("wsss_core.cams.background_power"):
        for call in (lambda: alias(x, 2.0), lambda: C.background_power(x, 2.0),
                     lambda: with_background(x, alpha=2.0)):  # through another library function too
            with pytest.raises(grading.DelegationError, match="wsss_core.cams.background_power"):
                call()
        assert torch.equal(_bg(x, 2.0), want)  # the answer's own torch code still runs
    assert torch.equal(alias(x, 2.0), want) and torch.equal(C.background_power(x, 2.0), want)


def test_forbid_methods_builtins_and_wrapped_functions():
    cm = ConfusionMatrix(2).update(np.array([0, 1, 1]), np.array([0, 1, 0]))
    miou = cm.miou()
    mod = types.ModuleType("_grading_probe")

    def inner(a):
        return a + 1

    def wrapper(*a):  # a decorator's closure
        return inner(*a)
    wrapper.__wrapped__ = inner
    mod.f = wrapper
    sys.modules[mod.__name__] = mod
    try:
        with grading.forbid("wsss_core.metrics.ConfusionMatrix.miou", "torch.amax", "_grading_probe.f"):
            with pytest.raises(grading.DelegationError):
                cm.miou()
            with pytest.raises(grading.DelegationError):
                torch.amax(torch.zeros(2), 0)
            with pytest.raises(grading.DelegationError):
                mod.f(1)
        assert cm.miou() == miou and mod.f(1) == 2 and float(torch.amax(torch.ones(2), 0)) == 1.0
    finally:
        del sys.modules[mod.__name__]


def test_forbid_restores_after_an_error():
    with pytest.raises(ZeroDivisionError):
        with grading.forbid("wsss_core.cams.background_power"):
            1 / 0
    assert background_power(torch.zeros(1, 2, 2), 1.0).shape == (2, 2)


def test_attempt_goes_on_with_the_library(capsys):
    x = torch.rand(2, 3, 3)
    want = background_power(x, 4.0)

    def stub(cams, alpha):
        raise NotImplementedError()

    def broken(cams, alpha):
        return cams.nonexistent

    def wrong(cams, alpha):
        return cams.amax(0)

    for fn, said in ((stub, "not implemented yet"), (broken, "raised AttributeError"), (wrong, "differs")):
        got = grading.attempt(fn, background_power, x, 4.0)
        assert torch.equal(got, want)
        out = capsys.readouterr().out
        assert said in out and "the lesson goes on with the library's result" in out
    got = grading.attempt(_bg, background_power, x, 4.0)
    assert "✓" in capsys.readouterr().out and torch.allclose(got, want)


def test_tests_reports_on_stderr_and_never_raises(capsys):
    with grading.tests("ex"):
        assert 1 == 2, "one is not two"
    cap = capsys.readouterr()
    assert "✗ [ex] AssertionError: one is not two" in cap.err and "0 points" in cap.err
    with grading.tests("ex"):
        warnings.warn("noisy but correct")
        print("to stderr", file=sys.stderr)
    cap = capsys.readouterr()
    assert cap.err == ""  # nbgrader gives 0 to any stderr output: a passing cell writes none
    assert "noisy but correct" in cap.out and "to stderr" in cap.out and "✓" in cap.out


def test_check_against_fresh_cases_catch_hard_coding_and_delegation(capsys):
    rng = grading.fresh_rng()
    assert np.random.default_rng(grading.seed_of(rng)).random() == rng.random()
    cases = [(torch.as_tensor(rng.random((3, 4, 5)), dtype=torch.float32), float(rng.uniform(1, 30)))
             for _ in range(3)]
    grading.check_against(_bg, background_power, cases, forbid=["wsss_core.cams.background_power"])
    with pytest.raises(AssertionError, match=r"random case 0 \(seed 7\)"):
        grading.check_against(lambda c, a: torch.tensor([[0.0, 0.25]]), background_power, cases, seed=7)
    with grading.tests("delegating"):
        grading.check_against(lambda c, a: background_power(c, a), background_power, cases,
                              forbid=["wsss_core.cams.background_power"])
    assert "DelegationError" in capsys.readouterr().err


def test_same():
    assert grading.same(torch.tensor([1.0, np.nan]), np.array([1.0, np.nan]))
    assert not grading.same(np.zeros((2, 3)), np.zeros((3, 2)))
    assert grading.same((1, np.int64(2)), [1, 2]) and not grading.same((1, 2), (1, 3))
    assert grading.same({"a": 1.0}, {"a": 1.0 + 1e-9}) and not grading.same(None, 1.0)


def test_strict_mode_raises_for_instructor_runs(monkeypatch):
    monkeypatch.setenv("WSSS_STRICT_TESTS", "1")
    with pytest.raises(AssertionError):
        with grading.tests("ex"):
            assert False, "broken solution"
    x = torch.rand(2, 3, 3)
    with pytest.raises(AssertionError, match="differs from the library"):
        grading.attempt(lambda c, a: c.amax(0), background_power, x, 4.0)
    with pytest.raises(NotImplementedError):
        grading.attempt(lambda c, a: (_ for _ in ()).throw(NotImplementedError()), background_power, x, 4.0)
    assert torch.allclose(grading.attempt(_bg, background_power, x, 4.0), background_power(x, 4.0))
