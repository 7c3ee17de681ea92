# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Grading demo · two graded exercises in nbgrader's form
#
# The instructor copy of a tiny lesson that proves the course tooling (`course/build.py`,
# `tests/test_course.py`). Each exercise is three cells: the **answer** (an nbgrader solution cell),
# the **call site** where the lesson uses the answer through `grading.attempt` and goes on whatever
# happens, and the **tests** (an nbgrader autograded cell with points: visible tests, then hidden tests
# that the student release does not contain).

# %% tags=["parameters"]
SEED = 0

# %%
import numpy as np
import torch

from wsss_core import grading
from wsss_core.cams import background_power, cams_to_labels, miou_from_confusion

g = torch.Generator().manual_seed(SEED)
cams = torch.rand(3, 8, 10, generator=g)          # three foreground classes' CAMs in [0, 1]

# %% [markdown]
# ## Exercise 1 · background score (2 points)
#
# PSA scores the background as $\mathrm{bg}(x) = (1 - \max_c M_c(x))^{\alpha}$.
# Write `background_score(cams, alpha)`: `cams` is a float tensor $(C, H, W)$, the result $(H, W)$ with
# the dtype of `cams`. Do not call `wsss_core.cams.background_power` (it is unavailable while graded).

# %% nbgrader={"grade": false, "grade_id": "background_score_answer", "locked": false, "schema_version": 3, "solution": true, "task": false}
def background_score(cams, alpha):
    """(C, H, W) class maps in [0, 1] → (H, W) background score (1 − max_c M_c)^α."""
    ### BEGIN SOLUTION
    return (1.0 - cams.amax(dim=0)) ** alpha
    ### END SOLUTION


# %%
bg = grading.attempt(background_score, background_power, cams, 4.0)
print("background share at alpha=4:", float((bg > cams.amax(0)).float().mean()))

# %% nbgrader={"grade": true, "grade_id": "background_score", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
with grading.tests("background_score"):
    c = torch.tensor([[[0.0, 0.5]], [[1.0, 0.25]]])               # (C=2, H=1, W=2)
    out = background_score(c, 2.0)
    assert tuple(out.shape) == (1, 2), f"shape {tuple(out.shape)}, expected (H, W) = (1, 2)"
    assert out.dtype == c.dtype, f"dtype {out.dtype}, expected {c.dtype}"
    assert torch.allclose(out, torch.tensor([[0.0, 0.25]])), f"{out} ≠ [[(1-1)², (1-0.5)²]]"
    ### BEGIN HIDDEN TESTS
    rng = grading.fresh_rng()
    cases = [(torch.as_tensor(rng.random((int(rng.integers(1, 6)), int(rng.integers(2, 9)), 7)),
                              dtype=torch.float32), float(rng.uniform(1, 32))) for _ in range(4)]
    grading.check_against(background_score, background_power, cases, seed=grading.seed_of(rng),
                          forbid=["wsss_core.cams.background_power", "wsss_core.cams.with_background"])
    ### END HIDDEN TESTS

# %% [markdown]
# ## Exercise 2 · mIoU from a confusion matrix (3 points)
#
# Write `miou(conf)`: `conf` is a $(K, K)$ integer confusion matrix (rows: truth, columns: prediction).
# $\mathrm{IoU}_k = \frac{\mathrm{TP}_k}{\mathrm{row}_k + \mathrm{col}_k - \mathrm{TP}_k}$; a class absent
# from both truth and prediction is skipped, not counted as 0. Return a Python float.

# %% nbgrader={"grade": false, "grade_id": "miou_answer", "locked": false, "schema_version": 3, "solution": true, "task": false}
def miou(conf):
    """(K, K) confusion matrix → mean IoU over the classes present in truth or prediction."""
    ### BEGIN SOLUTION
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    return float(np.mean(tp[union > 0] / union[union > 0]))
    ### END SOLUTION


# %%
labels = cams_to_labels(cams, threshold=0.8).numpy()
truth = np.asarray(torch.rand(8, 10, generator=g).mul(4).long())
conf = np.bincount(truth.ravel() * 4 + labels.ravel(), minlength=16).reshape(4, 4)
score = grading.attempt(miou, miou_from_confusion, conf)
print(f"mIoU of the pseudo-labels: {score:.3f}")

# %% nbgrader={"grade": true, "grade_id": "miou", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
with grading.tests("miou"):
    c = np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]])                 # class 2 absent: skipped
    out = miou(c)
    assert isinstance(out, float), f"a Python float, not {type(out).__name__}"
    assert abs(out - (3 / 4 + 2 / 3) / 2) < 1e-9, f"{out} ≠ (3/4 + 2/3) / 2"
    ### BEGIN HIDDEN TESTS
    rng = grading.fresh_rng()
    cases = []
    for _ in range(5):
        k = int(rng.integers(2, 8))
        m = rng.integers(0, 50, size=(k, k))
        gone = rng.integers(0, k)
        m[gone, :] = 0
        m[:, gone] = 0
        cases.append((m,))
    grading.check_against(miou, miou_from_confusion, cases, seed=grading.seed_of(rng),
                          forbid=["wsss_core.cams.miou_from_confusion", "wsss_core.metrics.ConfusionMatrix.iou",
                                  "wsss_core.metrics.ConfusionMatrix.miou", "wsss_core.metrics.miou"])
    ### END HIDDEN TESTS

# %% [markdown]
# ## The end
#
# Run All reaches this cell whatever the answers above.

# %%
print("lesson finished")
