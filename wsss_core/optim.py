"""The optimiser, learning-rate schedule and mixed precision of :func:`wsss_core.engine.train`.

* :func:`amp_setup` - ``TrainConfig.amp`` and the device → autocast on/off, its dtype, whether a
  ``GradScaler`` is used;
* :func:`build_param_groups` - the model's trainable parameters in groups with ``lr_mult`` (PSA / IRN's
  1×, 2×, 10×, 20×) and their own weight decay;
* :func:`build_optimizer` - SGD / Adam / AdamW over those groups;
* :func:`build_scheduler` - one-cycle, or a ``LambdaLR`` of :func:`lr_factor` (poly / cosine / constant
  with a linear warm-up), stepped every iteration.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from .engine import TrainConfig

__all__ = ["amp_setup", "build_param_groups", "build_optimizer", "lr_factor", "build_scheduler"]


def amp_setup(amp, device: torch.device) -> tuple[bool, torch.dtype | None, bool]:
    """``(enabled, dtype, use_scaler)`` for the autocast context."""
    if amp == "auto":
        amp = device.type == "cuda"
    if amp is False:
        return False, None, False
    if amp is True:
        dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    elif amp == "fp16":
        dtype = torch.float16
    elif amp == "bf16":
        dtype = torch.bfloat16
    else:
        raise ValueError(f"bad amp value {amp!r}")
    return True, dtype, (device.type == "cuda" and dtype == torch.float16)


def build_param_groups(model: nn.Module, cfg: TrainConfig, param_groups) -> list[dict]:
    """``param_groups(model)`` (default: one group of every trainable parameter) with frozen parameters
    left out, empty groups dropped, ``lr = cfg.lr × lr_mult`` and ``weight_decay`` defaulting to the
    config's; a parameter in two groups, or no trainable parameter at all, raises ``ValueError``."""
    if param_groups is None:
        params = [p for p in model.parameters() if p.requires_grad]
        groups = [{"params": params}]
    else:
        groups = [dict(g) for g in param_groups(model)]
    out = []
    seen = set()
    for i, g in enumerate(groups):
        if "params" not in g:
            raise ValueError(f"param_groups()[{i}] has no 'params'")
        params = [p for p in g["params"] if p.requires_grad]
        for p in params:
            if id(p) in seen:
                raise ValueError(f"a parameter appears in more than one group (group {i})")
            seen.add(id(p))
        if not params:
            continue
        mult = float(g.pop("lr_mult", 1.0))
        g["params"] = params
        g["lr_mult"] = mult
        g["lr"] = cfg.lr * mult
        g.setdefault("weight_decay", cfg.weight_decay)
        out.append(g)
    if not out:
        raise ValueError("the model has no trainable parameters")
    return out


def build_optimizer(groups: list[dict], cfg: TrainConfig) -> torch.optim.Optimizer:
    """``cfg.optimizer`` (``sgd`` with ``cfg.momentum``, ``adam``, ``adamw``) over ``groups``."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(cfg: TrainConfig, it: int, total: int) -> float:
    """The LambdaLR factor at (0-based) iteration ``it`` of ``total`` for ``poly`` / ``cosine`` /
    ``constant`` schedules, warm-up included: ``lr(it) = base_lr × lr_mult × lr_factor(cfg, it, total)``.
    """
    t = min(it, total) / max(total, 1)
    if cfg.schedule == "poly":
        f = (1.0 - t) ** cfg.poly_power
    elif cfg.schedule == "cosine":
        f = 0.5 * (1.0 + math.cos(math.pi * t))
    elif cfg.schedule == "constant":
        f = 1.0
    else:
        raise ValueError(f"lr_factor() does not cover schedule {cfg.schedule!r}")
    if cfg.warmup_iters and it < cfg.warmup_iters:
        f *= 0.1 + 0.9 * it / cfg.warmup_iters
    return f


def build_scheduler(optimizer, cfg: TrainConfig, total: int):
    """The per-iteration LR scheduler over ``total`` iterations (see ``TrainConfig.schedule``)."""
    if cfg.schedule == "onecycle":
        cycle = not (cfg.optimizer == "sgd" and cfg.momentum == 0)
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[g["lr"] for g in optimizer.param_groups],
            total_steps=total,
            cycle_momentum=cycle,
        )

    def factor(it: int) -> float:  # a plain function: LambdaLR does not pickle it (state = counters)
        return lr_factor(cfg, it, total)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
