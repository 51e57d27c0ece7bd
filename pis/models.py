"""Model specs: the decoder dimensions every op graph is built from.

A spec is a preset name or a Hugging Face ``config.json``. Only the shape-defining fields are
read; everything else in the config is ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pis.errors import PisError


@dataclass(frozen=True)
class ModelSpec:
    """Dimensions of a decoder-only transformer with grouped-query attention.

    ``fused_qkv`` / ``fused_gate_up`` say whether q/k/v (and gate/up) run as one GEMM;
    Hugging Face Llama, Qwen2 and Mistral do not fuse, so both default to False.
    """

    name: str
    hidden: int
    ffn: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tie_embeddings: bool = False
    fused_qkv: bool = False
    fused_gate_up: bool = False
    #: "llama" or "qwen2" (Qwen2 adds biases to q/k/v; shapes are the same)
    arch: str = "llama"

    def __post_init__(self) -> None:
        for f in ("hidden", "ffn", "layers", "heads", "kv_heads", "head_dim", "vocab"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise PisError(f"model {self.name!r}: {f} must be a positive integer, got {v!r}")
        if self.heads % self.kv_heads:
            raise PisError(f"model {self.name!r}: {self.heads} attention heads are not divisible "
                           f"by {self.kv_heads} key/value heads")

    @property
    def q_width(self) -> int:
        """Output width of the q projection (H·d)."""
        return self.heads * self.head_dim

    @property
    def kv_width(self) -> int:
        """Output width of the k and v projections (G·d)."""
        return self.kv_heads * self.head_dim

    @property
    def group_size(self) -> int:
        """Query heads per KV head."""
        return self.heads // self.kv_heads

    def params(self) -> int:
        """Parameter count (weights only, norms included)."""
        d, f = self.hidden, self.ffn
        attn = d * (self.q_width + 2 * self.kv_width) + self.q_width * d
        per_layer = attn + 3 * d * f + 2 * d
        emb = self.vocab * d * (1 if self.tie_embeddings else 2)
        return self.layers * per_layer + emb + d

    def with_options(self, **kw: Any) -> "ModelSpec":
        """A copy with some fields replaced (e.g. ``fused_qkv=True``)."""
        return replace(self, **kw)


def _preset(name: str, hidden: int, ffn: int, layers: int, heads: int, kv_heads: int,
            vocab: int, arch: str = "llama", tie: bool = False) -> ModelSpec:
    return ModelSpec(name, hidden, ffn, layers, heads, kv_heads, hidden // heads, vocab,
                     tie_embeddings=tie, arch=arch)


#: Shapes from each model's published config.json.
PRESETS: dict[str, ModelSpec] = {
    m.name: m for m in (
        _preset("llama-3.1-8b", 4096, 14336, 32, 32, 8, 128256),
        _preset("llama-3.1-70b", 8192, 28672, 80, 64, 8, 128256),
        _preset("llama-2-7b", 4096, 11008, 32, 32, 32, 32000),
        _preset("qwen2.5-7b", 3584, 18944, 28, 28, 4, 152064, arch="qwen2"),
        _preset("mistral-7b", 4096, 14336, 32, 32, 8, 32768),
    )
}
DEFAULT_MODEL = "llama-3.1-8b"

_HF_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "vocab_size")


def spec_from_hf_config(cfg: dict[str, Any], name: str) -> ModelSpec:
    """Build a spec from a parsed Hugging Face ``config.json``."""
    if not isinstance(cfg, dict):
        raise PisError(f"model config {name!r} is not a JSON object")
    missing = [f for f in _HF_FIELDS if f not in cfg]
    if missing:
        raise PisError(f"model config {name!r} lacks {', '.join(missing)}")
    try:
        heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        kv_heads = int(cfg.get("num_key_value_heads") or heads)
        head_dim = int(cfg.get("head_dim") or (hidden // heads if heads else 0))
        arch = "qwen2" if str(cfg.get("model_type", "")).startswith("qwen2") else "llama"
        return ModelSpec(name, hidden, int(cfg["intermediate_size"]), int(cfg["num_hidden_layers"]),
                         heads, kv_heads, head_dim, int(cfg["vocab_size"]),
                         tie_embeddings=bool(cfg.get("tie_word_embeddings", False)), arch=arch)
    except (TypeError, ValueError) as e:
        raise PisError(f"model config {name!r}: {e}") from None


def load_model(name_or_path: str) -> ModelSpec:
    """A preset by name, or a Hugging Face ``config.json`` by path."""
    if name_or_path in PRESETS:
        return PRESETS[name_or_path]
    path = Path(name_or_path)
    if path.is_dir() and (path / "config.json").is_file():
        path = path / "config.json"
    if not path.is_file():
        raise PisError(f"unknown model {name_or_path!r}: not a preset ({', '.join(PRESETS)}) "
                       f"nor a config.json file")
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PisError(f"cannot read model config {path}: {e}") from None
    return spec_from_hf_config(cfg, path.parent.name if path.name == "config.json" else path.stem)
