"""What every executor shares: the timed step, the model interface, token ids and 2:4 masks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

#: Linear layers of one decoder layer (attribute paths in Hugging Face's Llama and Qwen2).
PROJECTIONS: tuple[str, ...] = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


@dataclass
class Step:
    """One prefill forward or decode step to time: ``run()``, with ``setup()`` run untimed
    before every call of it (a decode step's fresh KV cache)."""

    run: Callable[[], object]
    setup: Callable[[], None] | None = None


class ModelUnderTest:
    """A built model that produces timed steps for prefill and decode."""

    backend: str = ""

    def step(self, phase: str, batch: int, seq_len: int, context: int) -> Step:
        """The step of ``phase`` at ``batch`` × ``seq_len`` (prefill) or with ``context``
        cached tokens (decode), run eagerly."""
        raise NotImplementedError

    def graph_step(self, phase: str, batch: int, seq_len: int, context: int) -> Step:
        """The same step captured in one CUDA graph and replayed (graph execution)."""
        raise NotImplementedError


def token_ids(vocab: int, batch: int, length: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """Deterministic random token ids (batch, length) on ``device``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=g).to(device)


def mask_2to4(w: torch.Tensor) -> torch.Tensor:
    """Magnitude 2:4 pruning of ``w`` (n x k): the 2 largest of every 4 consecutive weights along K."""
    n, k = w.shape
    groups = w.reshape(n, k // 4, 4)
    keep = groups.abs().topk(2, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
    return (groups * mask).reshape(n, k)
