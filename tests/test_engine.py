"""Tests of wsss_core.engine: the training loop every stage uses.

Run as a script with torchrun's environment variables (``torchrun --nproc_per_node 2
tests/test_engine.py --ddp-worker OUT`` works too) this file is also the worker of the DDP test.
"""

from __future__ import annotations

import gc
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from wsss_core import engine
from wsss_core.engine import (
    CheckpointMismatchError,
    History,
    TrainConfig,
    load_checkpoint_weights,
    lr_factor,
    predict,
    select_device,
    to_device,
    train,
)

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------------
# a tiny separable problem
# --------------------------------------------------------------------------------------------------
def make_dataset(n: int = 64, seed: int = 0) -> TensorDataset:
    """Two Gaussian blobs in 4-d, labels 0/1 - linearly separable with a margin."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    centres = torch.tensor([[2.0, 0.0, -1.0, 0.5], [-2.0, 0.5, 1.0, -0.5]])
    x = centres[y] + 0.5 * torch.randn(n, 4, generator=g)
    return TensorDataset(x, y)


def make_model(seed: int = 0, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(dropout), nn.Linear(8, 2))


def step(model, batch, device):
    x, y = to_device(batch, device)
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    return {"loss": loss, "acc": (logits.argmax(1) == y).float().mean(), "_logits": logits}


def base_cfg(**kw) -> TrainConfig:
    d = dict(epochs=3, batch_size=8, lr=0.05, optimizer="sgd", schedule="constant", device="cpu",
             progress=False, weight_decay=0.0)
    d.update(kw)
    return TrainConfig(**d)


def weights(model) -> dict:
    return {k: v.detach().clone() for k, v in engine.unwrap(model).state_dict().items()}


def assert_same_weights(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if atol == 0:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0)


def strip_times(h: History) -> dict:
    d = h.to_dict()
    for r in d["epochs"]:
        r.pop("seconds")
    return d


# --------------------------------------------------------------------------------------------------
# small pieces
# --------------------------------------------------------------------------------------------------
def test_select_device():
    assert select_device("cpu") == torch.device("cpu")
    assert select_device(torch.device("cpu")) == torch.device("cpu")
    auto = select_device("auto")
    assert auto.type in ("cuda", "mps", "cpu")
    if not torch.cuda.is_available():
        assert auto.type != "cuda"
        with pytest.raises(RuntimeError, match="cuda"):
            select_device("cuda")


def test_to_device_recurses():
    from collections import namedtuple

    Pair = namedtuple("Pair", "a b")
    batch = {"img": torch.ones(2), "meta": ["x", (torch.zeros(1), 3)], "p": Pair(torch.ones(1), "s")}
    out = to_device(batch, "cpu")
    assert isinstance(out, dict) and isinstance(out["meta"], list) and isinstance(out["meta"][1], tuple)
    assert isinstance(out["p"], Pair) and out["p"].b == "s"
    assert out["meta"][1][1] == 3 and torch.equal(out["img"], batch["img"])
    if torch.cuda.is_available():
        assert to_device(batch, "cuda")["meta"][1][0].is_cuda


def test_train_config_roundtrip_and_validation():
    cfg = TrainConfig(epochs=3, lr=0.1, schedule="poly", checkpoint_dir=Path("/tmp/x"))
    d = cfg.to_dict()
    assert d["checkpoint_dir"] == "/tmp/x"
    assert TrainConfig.from_dict(d) == cfg
    with pytest.raises(ValueError, match="lrr"):
        TrainConfig.from_dict({"lrr": 1})
    with pytest.raises(ValueError):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(ValueError, match="onecycle"):
        TrainConfig(schedule="onecycle", warmup_iters=5)


def test_seed_everything_reproducible():
    engine.seed_everything(7)
    a = (torch.rand(3), np.random.rand(3), __import__("random").random())
    engine.seed_everything(7)
    b = (torch.rand(3), np.random.rand(3), __import__("random").random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    had_cublas = "CUBLAS_WORKSPACE_CONFIG" in os.environ
    try:
        engine.seed_everything(0, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    finally:
        engine.seed_everything(0, deterministic=False)
        if not had_cublas:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    assert not torch.are_deterministic_algorithms_enabled()


# --------------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------------
def test_loss_decreases_and_scalars_logged():
    model = make_model()
    h = train(model, step, make_dataset(), base_cfg(epochs=5))
    assert len(h.epochs) == 5 and len(h.iters) == 5 * 8
    assert h.epochs[-1]["loss"] < 0.3 * h.epochs[0]["loss"]
    assert h.epochs[-1]["acc"] == pytest.approx(1.0)
    it = h.iters[10]
    assert it["epoch"] == 1 and it["iter"] == 10 and it["batch"] == 2
    assert set(it) == {"epoch", "iter", "batch", "lr", "loss", "acc"}  # "_logits" is not logged
    # epoch means are the means of the iteration records
    assert h.epochs[1]["loss"] == pytest.approx(np.mean([r["loss"] for r in h.iters[8:16]]))
    assert h.last("acc") == h.epochs[-1]["acc"]
    assert h.epochs[-1]["end_iter"] == 40 and h.epochs[0]["seconds"] >= 0
    assert History.from_dict(h.to_dict()) == h


def test_same_seed_same_weights_other_seed_differs():
    ds = make_dataset()
    runs = []
    for seed in (3, 3, 4):
        model = make_model(0, dropout=0.2)
        train(model, step, ds, base_cfg(seed=seed, optimizer="adam", schedule="onecycle", lr=0.01))
        runs.append(weights(model))
    assert_same_weights(runs[0], runs[1])
    assert not torch.equal(runs[0]["0.weight"], runs[2]["0.weight"])


class _Crash(Exception):
    pass


def _crash_after(epoch: int):
    def cb(state):
        if state.epoch == epoch:
            raise _Crash

    return cb


def test_resume_after_interruption_is_identical(tmp_path):
    ds = make_dataset()
    # dropout + shuffling + Adam + one-cycle: every piece of state must be restored
    kw = dict(epochs=3, optimizer="adam", schedule="onecycle", lr=0.01, seed=5)

    ref = make_model(0, dropout=0.3)
    h_ref = train(ref, step, ds, base_cfg(checkpoint_dir=tmp_path / "a", **kw))

    cfg = base_cfg(checkpoint_dir=tmp_path / "b", **kw)
    with pytest.raises(_Crash):
        train(make_model(0, dropout=0.3), step, ds, cfg, callbacks=[_crash_after(0)])
    ckpt = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 0 and not ckpt["finished"]

    calls = []

    def counting_step(model, batch, device):
        calls.append(1)
        return step(model, batch, device)

    resumed = make_model(123, dropout=0.3)  # a different init: the checkpoint must override it
    h = train(resumed, counting_step, ds, cfg)
    assert len(calls) == 2 * 8  # only epochs 1 and 2 ran
    assert_same_weights(weights(resumed), weights(ref))
    assert len(h.epochs) == len(h_ref.epochs) == 3 and len(h.iters) == len(h_ref.iters)
    assert strip_times(h) == strip_times(h_ref)
    assert sorted(os.listdir(tmp_path / "b")) == ["last.pt"]  # no temporary files left


def test_finished_run_returns_at_once(tmp_path):
    ds = make_dataset()
    cfg = base_cfg(checkpoint_dir=tmp_path)
    model = make_model()
    h1 = train(model, step, ds, cfg)

    def no_step(*a):
        raise AssertionError("a finished run must not train again")

    fresh = make_model(99)
    h2 = train(fresh, no_step, ds, cfg.replace(progress=True, desc="again"))  # free fields may differ
    assert h2 == h1
    assert_same_weights(weights(fresh), weights(model))
    other = make_model(98)
    load_checkpoint_weights(other, tmp_path / "last.pt")
    assert_same_weights(weights(other), weights(model))


def test_checkpoint_from_other_config_raises(tmp_path):
    ds = make_dataset()
    train(make_model(), step, ds, base_cfg(checkpoint_dir=tmp_path, epochs=1))
    with pytest.raises(CheckpointMismatchError, match=r"(?s)epochs: 1 \(checkpoint\) != 2.*resume=False"):
        train(make_model(), step, ds, base_cfg(checkpoint_dir=tmp_path, epochs=2))
    with pytest.raises(CheckpointMismatchError, match="lr"):
        train(make_model(), step, ds, base_cfg(checkpoint_dir=tmp_path, epochs=1, lr=0.2))
    # resume=False starts afresh and overwrites
    h = train(make_model(), step, ds, base_cfg(checkpoint_dir=tmp_path, epochs=2, resume=False))
    assert len(h.epochs) == 2
    assert torch.load(tmp_path / "last.pt", weights_only=True)["cfg"]["epochs"] == 2


def test_lr_multipliers_and_group_weight_decay():
    seen = []

    class Spy:
        def on_iter_end(self, state):
            seen.append([(g["lr"], g["weight_decay"]) for g in state.optimizer.param_groups])

    def groups(model):
        return [
            {"params": model[0].parameters()},
            {"params": [model[3].weight], "lr_mult": 10},
            {"params": [model[3].bias], "lr_mult": 20, "weight_decay": 0.0},
        ]

    cfg = base_cfg(epochs=2, schedule="poly", lr=0.01, weight_decay=1e-4)
    h = train(make_model(), step, make_dataset(), cfg, param_groups=groups, callbacks=[Spy()])
    for it in (0, 5, 12):
        lrs = [lr for lr, _ in seen[it]]
        assert lrs[1] == pytest.approx(10 * lrs[0]) and lrs[2] == pytest.approx(20 * lrs[0])
        assert h.iters[it + 1]["lr_g1"] == pytest.approx(10 * h.iters[it + 1]["lr"])
    assert [wd for _, wd in seen[0]] == [1e-4, 1e-4, 0.0]
    assert h.iters[0]["lr_g2"] == pytest.approx(20 * 0.01)


def test_poly_and_warmup_schedules_follow_the_formula():
    ds = make_dataset(32)  # 4 iterations per epoch
    h = train(make_model(), step, ds, base_cfg(epochs=3, schedule="poly", poly_power=0.9, lr=0.02))
    total = 12
    for it in (0, 1, 5, 11):
        assert h.iters[it]["lr"] == pytest.approx(0.02 * (1 - it / total) ** 0.9)
    h = train(make_model(), step, ds, base_cfg(epochs=2, schedule="constant", warmup_iters=4, lr=0.02))
    assert [r["lr"] for r in h.iters[:6]] == pytest.approx([0.002, 0.0065, 0.011, 0.0155, 0.02, 0.02])
    h = train(make_model(), step, ds, base_cfg(epochs=2, schedule="cosine", lr=0.02))
    assert h.iters[4]["lr"] == pytest.approx(0.02 * 0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert lr_factor(base_cfg(schedule="poly", poly_power=1.0), 3, 4) == pytest.approx(0.25)
    # one-cycle: torch's OneCycleLR - starts at lr/25, peaks at lr around 30 %
    h = train(make_model(), step, ds, base_cfg(epochs=5, schedule="onecycle", lr=0.02))
    lrs = [r["lr"] for r in h.iters]
    assert lrs[0] == pytest.approx(0.02 / 25)
    assert max(lrs) == pytest.approx(0.02) and int(np.argmax(lrs)) == round(0.3 * 20) - 1


def test_nan_loss_raises_with_location():
    def bad_step(model, batch, device):
        out = step(model, batch, device)
        if len(calls) == 10:
            out["loss"] = out["loss"] * float("nan")
        calls.append(1)
        return out

    calls = []
    with pytest.raises(FloatingPointError, match=r"epoch 1 \(0-based\), iteration 2"):
        train(make_model(), bad_step, make_dataset(), base_cfg())


def test_eval_fn_and_callbacks_and_max_iters():
    events = []

    class Recorder:
        def on_train_start(self, s):
            events.append("start")

        def on_epoch_end(self, s):
            events.append(f"end{s.epoch}")

        def on_train_end(self, s):
            events.append("done")

    def eval_fn(model, epoch):
        assert not isinstance(model, nn.parallel.DistributedDataParallel)
        return {"val_acc": torch.tensor(0.5 + epoch), "loss": np.float32(1.0)}

    h = train(make_model(), step, make_dataset(), base_cfg(epochs=2, max_iters_per_epoch=3),
              eval_fn=eval_fn, callbacks=[Recorder()])
    assert len(h.iters) == 6
    assert [r["val_acc"] for r in h.epochs] == [0.5, 1.5]
    assert h.epochs[0]["eval_loss"] == 1.0 and h.epochs[0]["loss"] != 1.0  # clash gets a prefix
    assert events == ["start", "end0", "end1", "done"]


def test_grad_clip_bounds_each_update():
    model = make_model()
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    steps = []

    def spy(state):
        steps.append(torch.cat([p.detach().flatten().clone() for p in state.model.parameters()]))

    class Spy:
        on_iter_end = staticmethod(spy)

    # plain SGD without momentum: each update is lr × clipped gradient, so its norm is ≤ lr × clip
    train(model, step, make_dataset(), base_cfg(epochs=1, lr=1.0, momentum=0.0, grad_clip=1e-3),
          callbacks=[Spy()])
    prev = before
    for s in steps:
        assert (s - prev).norm() <= 1e-3 * (1 + 1e-4)
        prev = s
    assert (steps[-1] - before).norm() > 0


def test_bf16_autocast_on_cpu_when_asked():
    seen = []

    def amp_step(model, batch, device):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return step(model, batch, device)

    train(make_model(), amp_step, make_dataset(16), base_cfg(epochs=1, amp=True))
    assert seen[0] == (True, torch.bfloat16)
    seen.clear()
    train(make_model(), amp_step, make_dataset(16), base_cfg(epochs=1))  # amp="auto": off on CPU
    assert seen[0][0] is False


def test_empty_loader_raises():
    with pytest.raises(ValueError, match="no batch"):
        train(make_model(), step, make_dataset(4), base_cfg(batch_size=8))


def test_progress_bar_and_plot(capsys):
    import matplotlib

    matplotlib.use("Agg")
    h = train(make_model(), step, make_dataset(), base_cfg(epochs=2, progress=True),
              eval_fn=lambda m, e: {"val": 0.1 * e})
    err = capsys.readouterr().err
    assert "train 2/2" in err
    ax = h.plot(keys=("loss", "val"))
    assert len(ax.lines) == 2 + 1 + 1  # loss raw + smoothed + epoch markers, val per epoch
    np.testing.assert_allclose(ax.lines[2].get_xdata(), [8, 16])
    matplotlib.pyplot.close(ax.figure)


def test_predict_in_order_eval_mode_and_restores_mode():
    ds = make_dataset(10)
    model = make_model(dropout=0.5)
    model.train()

    def fn(m, batch, device):
        assert not m.training and not torch.is_grad_enabled()
        x, _ = to_device(batch, device)
        return m(x)

    out = predict(model, ds, fn, batch_size=4, progress=False)
    assert [o.shape[0] for o in out] == [4, 4, 2]
    assert model.training
    model.eval()
    torch.testing.assert_close(torch.cat(out), model(ds.tensors[0]))


# --------------------------------------------------------------------------------------------------
# DDP: 2 CPU processes (gloo) vs 1 process with the same global batch
# --------------------------------------------------------------------------------------------------
DDP_N = 16
DDP_EPOCHS = 4


def ddp_cfg(world_size: int, ckpt_dir) -> TrainConfig:
    # full batch (the global batch is the whole data set every epoch), so the DDP run and the
    # 1-process run take exactly the same optimisation steps up to float rounding
    return base_cfg(epochs=DDP_EPOCHS, batch_size=DDP_N // world_size, lr=0.1, optimizer="sgd",
                    momentum=0.9, schedule="poly", checkpoint_dir=str(ckpt_dir), seed=1)


def _ddp_worker(out_dir: str) -> None:
    from wsss_core import checkpoints
    from wsss_core.metrics import ConfusionMatrix

    out = Path(out_dir)
    saves = []
    real_save = checkpoints._atomic_save  # the writer of train()'s checkpoints lives there (not on the engine facade)

    def counting_save(obj, path):
        saves.append(str(path))
        real_save(obj, path)

    checkpoints._atomic_save = counting_save
    info = engine.init_distributed()
    ds = make_dataset(DDP_N)
    cfg = ddp_cfg(info.world_size, out / "ckpt")
    result = {"rank": info.rank, "world_size": info.world_size}
    # run 1 is interrupted after epoch 1 on every rank, run 2 resumes it, run 3 finds it finished
    try:
        train(make_model(0), step, ds, cfg, callbacks=[_crash_after(1)])
    except _Crash:
        result["crashed"] = True
    gc.collect()
    model = make_model(50)
    h = train(model, step, ds, cfg)
    result["steps_after_resume"] = len(h.iters)
    result["weights"] = {k: v.tolist() for k, v in weights(model).items()}
    result["loss"] = [r["loss"] for r in h.iters]
    calls = []
    again = make_model(51)
    train(again, lambda *a: calls.append(1), ds, cfg)
    result["finished_steps"] = len(calls)
    result["finished_weights_equal"] = all(
        torch.equal(a, b) for a, b in zip(weights(again).values(), weights(model).values())
    )
    result["saves"] = saves
    # collectives of the metrics module and helpers
    cm = ConfusionMatrix(3).update(np.array([info.rank]), np.array([info.rank]))
    result["cm"] = cm.reduce_from_all_processes().mat.tolist()
    result["mean"] = engine.all_reduce_mean(float(info.rank))
    part = predict(model, ds, lambda m, b, d: b[1].tolist(), batch_size=3, progress=False)
    result["predict"] = sum(part, [])
    (out / f"rank{info.rank}.json").write_text(json.dumps(result))
    engine.cleanup_distributed()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_ddp_two_cpu_processes_match_one_process(tmp_path):
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    # exactly the environment torchrun gives its workers (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*),
    # without the launcher process (it would cost seconds of imports)
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = dict(os.environ)
        env.update(PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1",
                   RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--ddp-worker", str(tmp_path)],
            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ))
    logs = []
    try:
        for proc in procs:
            logs.append(proc.communicate(timeout=150)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for rank, (proc, log) in enumerate(zip(procs, logs)):
        assert proc.returncode == 0, f"rank {rank} failed:\n{log[-5000:]}"
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())

    # only rank 0 wrote checkpoints: one per epoch (interrupted run + resumed run), one file
    assert r0["crashed"] and r1["crashed"]
    assert len(r0["saves"]) == DDP_EPOCHS and r1["saves"] == []
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["last.pt"]
    # every rank resumed from the checkpoint, then found the finished run and loaded it
    assert r0["steps_after_resume"] == r1["steps_after_resume"] == DDP_EPOCHS
    assert r0["finished_steps"] == r1["finished_steps"] == 0
    assert r0["finished_weights_equal"] and r1["finished_weights_equal"]
    for k in r0["weights"]:
        np.testing.assert_array_equal(r0["weights"][k], r1["weights"][k])  # DDP keeps ranks in sync

    # the same global batch in one process gives the same trajectory
    model = make_model(0)
    h = train(model, step, make_dataset(DDP_N), ddp_cfg(1, tmp_path / "single"))
    ref = weights(model)
    for k, v in r0["weights"].items():
        np.testing.assert_allclose(np.array(v), ref[k].numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(r0["loss"], [r["loss"] for r in h.iters], atol=1e-5)
    assert torch.load(tmp_path / "ckpt" / "last.pt", weights_only=True)["world_size"] == 2

    # metrics / helpers across ranks
    assert r0["cm"] == r1["cm"] == [[1, 0, 0], [0, 1, 0], [0, 0, 0]]
    assert r0["mean"] == r1["mean"] == 0.5
    assert sorted(r0["predict"] + r1["predict"]) == sorted(make_dataset(DDP_N).tensors[1].tolist())
    assert len(r0["predict"]) == len(r1["predict"]) == DDP_N // 2


def test_predict_leaves_the_global_rng_alone():
    """An evaluation between epochs must not change the training run's random draws."""
    from wsss_core.engine import predict

    model = torch.nn.Linear(2, 1)
    ds = torch.utils.data.TensorDataset(torch.zeros(4, 2))
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    predict(model, ds, lambda m, b, d: None, batch_size=2, progress=False)
    assert torch.equal(torch.rand(3), expected)


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--ddp-worker":
    _ddp_worker(sys.argv[2])



def test_numpy_numbers_in_a_trainconfig_are_stored_as_python_numbers():
    """Accepted numpy scalars become Python numbers: the same identity (checkpoint folder) as the plain
    config, and a checkpoint that ``torch.load(weights_only=True)`` can read back."""
    from wsss_core.stages import store

    a = engine.TrainConfig(epochs=np.int64(3), lr=np.float64(0.25), amp=False)
    b = engine.TrainConfig(epochs=3, lr=0.25, amp=False)
    assert type(a.epochs) is int and type(a.lr) is float
    assert store.fingerprint(store.train_identity(a)) == store.fingerprint(store.train_identity(b))
