"""What every stage config shares: a JSON-able dict (for checkpoint fingerprints and ``stage_config.json``),
the way back, and ``replace``.

    @dataclass
    class MyStageConfig(StageConfig):
        scales: tuple = (1.0,)
        train: engine.TrainConfig = field(default_factory=engine.TrainConfig)
"""
from __future__ import annotations

import dataclasses

from .. import engine


class StageConfig:
    """Mixin for the stages' config dataclasses (``train`` is an :class:`~wsss_core.engine.TrainConfig`)."""

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if isinstance(getattr(self, "train", None), engine.TrainConfig):
            d["train"] = self.train.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict):
        """Inverse of :meth:`to_dict` after a JSON round trip: ``train`` back to a ``TrainConfig`` and lists
        back to tuples for the fields declared as tuples."""
        d = dict(d)
        if isinstance(d.get("train"), dict):
            d["train"] = engine.TrainConfig.from_dict(d["train"])
        for f in dataclasses.fields(cls):
            if isinstance(d.get(f.name), list) and "tuple" in str(f.type):
                d[f.name] = tuple(d[f.name])
        return cls(**d)

    def replace(self, **kw):
        return dataclasses.replace(self, **kw)
