"""Every bench calibration can run, by op: :mod:`pis.calibrate.ops` for the ops a simulation
executes, :mod:`pis.calibrate.decoder_benches` for whole decoders."""

from __future__ import annotations

import torch

from pis.calibrate.decoder_benches import DECODER_BUILDERS
from pis.calibrate.ops import OP_BUILDERS, Bench, Builder, Shape
from pis.profiles.schema import OPS

BUILDERS: dict[str, Builder] = {**OP_BUILDERS, **DECODER_BUILDERS}
assert set(BUILDERS) == set(OPS), "every schema op needs a builder"


def build(op: str, shape: Shape, dtype: torch.dtype, device: torch.device) -> Bench:
    """The benchmark of ``op`` at ``shape`` (raises :class:`pis.errors.Unsupported` when it
    cannot run here)."""
    return BUILDERS[op](shape, dtype, device)
