"""Hugging Face executors: the static families as transformers models with random weights.

Static families run through Hugging Face ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` built from
a config derived from the :class:`ModelSpec`; pruned dimensions come from :mod:`pis.pruned`, so
the model that runs is the model that is predicted. ``.step(phase, batch, seq, context)`` gives
the zero-argument call to time and an untimed ``setup`` to run before every repeat (decode: a
fresh KV cache of exactly ``context`` tokens, so every step sees the same length).
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from pis.errors import PisError, Unsupported
from pis.executors.base import PROJECTIONS, ModelUnderTest, Step, mask_2to4, token_ids
from pis.executors.quantized import QuantLinear, quantize_linears
from pis.models import ModelSpec
from pis.pruned import (VARIANT_NAMES, PruneOptions, layers_kept, layers_removed, lowrank_rank, pruned_ffn,
                        pruned_heads, pruned_hidden, study_ffn, study_hidden, study_kv_heads, study_rank,
                        study_sublayers_removed)

#: Families built through Hugging Face transformers.
HF_FAMILIES: tuple[str, ...] = ("dense", "static-depth", "static-width", "static-width-hidden",
                                "low-rank", "unstructured", "semi-structured")


class PrunedLayer(nn.Module):
    """Wraps an HF decoder layer: skip its attention and/or MLP sublayer, or add SliceGPT's
    residual mapping GEMMs on both shortcuts. Mirrors ``LlamaDecoderLayer.forward``."""

    def __init__(self, inner: nn.Module, skip_attn: bool = False, skip_mlp: bool = False,
                 shortcut_dim: int | None = None) -> None:
        super().__init__()
        self.inner, self.skip_attn, self.skip_mlp = inner, skip_attn, skip_mlp
        self.attn_map = nn.Linear(shortcut_dim, shortcut_dim, bias=False) if shortcut_dim else None
        self.mlp_map = nn.Linear(shortcut_dim, shortcut_dim, bias=False) if shortcut_dim else None

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        layer = self.inner
        if not self.skip_attn:
            residual = self.attn_map(hidden_states) if self.attn_map is not None else hidden_states
            h = layer.input_layernorm(hidden_states)
            h = layer.self_attn(hidden_states=h, **kwargs)[0]
            hidden_states = residual + h
        if not self.skip_mlp:
            residual = self.mlp_map(hidden_states) if self.mlp_map is not None else hidden_states
            hidden_states = residual + layer.mlp(layer.post_attention_layernorm(hidden_states))
        return hidden_states


def hf_config(spec: ModelSpec, **override: int):
    """A transformers config for ``spec`` (SDPA attention), with dimensions overridden."""
    try:
        from transformers import LlamaConfig, Qwen2Config
    except ImportError as err:  # pragma: no cover - depends on the install
        raise PisError("pis-validate needs transformers (pip install 'pruninginfersim[validate]')") from err
    cls = Qwen2Config if spec.arch == "qwen2" else LlamaConfig
    kw = dict(vocab_size=spec.vocab, hidden_size=spec.hidden, intermediate_size=spec.ffn,
              num_hidden_layers=spec.layers, num_attention_heads=spec.heads,
              num_key_value_heads=spec.kv_heads, head_dim=spec.head_dim,
              tie_word_embeddings=spec.tie_embeddings, max_position_embeddings=1 << 17)
    kw.update(override)
    cfg = cls(**kw)
    cfg._attn_implementation = "sdpa"
    return cfg


def _get(module: nn.Module, path: str) -> tuple[nn.Module, str]:
    *parents, attr = path.split(".")
    for p in parents:
        module = getattr(module, p)
    return module, attr


class HfModel(ModelUnderTest):
    """A transformers causal LM; prefill computes logits of the last token only."""

    backend = "hf"

    def __init__(self, model: nn.Module, config, device: torch.device) -> None:
        self.model, self.config, self.device = model, config, device
        params = inspect.signature(model.forward).parameters
        # transformers 5 renamed past_key_values to cache (the old name still works, with a warning).
        self.cache_kw = "cache" if "cache" in params else "past_key_values"

    def kv_tensors(self, batch: int, context: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Random (K, V) per layer for a cache of ``context`` tokens (a DynamicCache's input)."""
        cfg, p = self.config, next(self.model.parameters())
        g = torch.Generator().manual_seed(1)
        shape = (batch, cfg.num_key_value_heads, context, cfg.head_dim)
        # Every layer gets a cache (also layers whose attention is skipped), so the cache's
        # length — read from layer 0 — is right for positions and masks.
        return [(torch.randn(shape, generator=g).to(p.device, p.dtype),
                 torch.randn(shape, generator=g).to(p.device, p.dtype))
                for _ in range(cfg.num_hidden_layers)]

    def step(self, phase: str, batch: int, seq_len: int, context: int) -> Step:
        model = self.model
        if phase == "prefill":
            ids = token_ids(self.config.vocab_size, batch, seq_len, self.device)
            return Step(lambda: model(input_ids=ids, use_cache=True, logits_to_keep=1))
        from transformers import DynamicCache
        kv = self.kv_tensors(batch, context)
        ids = token_ids(self.config.vocab_size, batch, 1, self.device)
        state: dict = {}

        def setup() -> None:
            state["cache"] = DynamicCache(kv, config=self.config)

        def step() -> object:
            return model(input_ids=ids, use_cache=True, **{self.cache_kw: state["cache"]})

        return Step(step, setup)

    def static_step(self, phase: str, batch: int, seq_len: int, context: int, logits: bool = True) -> Step:
        """One step over a static cache written in place, as graph execution runs it: prefill
        keeps the logits of every prompt token (the study's framework does), decode writes the
        new token's K/V into slot ``context`` and attends over the slots before it."""
        from transformers import StaticCache

        net = self.model if logits else self.model.model
        head = {"logits_to_keep": 0} if logits else {}
        if phase == "prefill":
            cache = StaticCache(config=self.config, max_cache_len=seq_len)
            ids = token_ids(self.config.vocab_size, batch, seq_len, self.device)
            pos = torch.arange(seq_len, device=self.device)
        else:
            # The step attends over slots 0..context whatever they hold: the cache is left as it
            # is allocated rather than filled by a prompt (the kernels do the same work).
            cache = StaticCache(config=self.config, max_cache_len=context + 1)
            ids = token_ids(self.config.vocab_size, batch, 1, self.device)
            pos = torch.tensor([context], device=self.device)
        return Step(lambda: net(input_ids=ids, use_cache=True, cache_position=pos, **{self.cache_kw: cache}, **head))

    def graph_step(self, phase: str, batch: int, seq_len: int, context: int, logits: bool = True) -> Step:
        """:meth:`static_step` captured in one CUDA graph: its run replays the graph."""
        return capture(self.static_step(phase, batch, seq_len, context, logits), self.device)


def capture(step: Step, device: torch.device, warmup: int = 3) -> Step:
    """``step`` captured in a CUDA graph after ``warmup`` runs on a side stream (as capture needs);
    the returned step replays it."""
    if device.type != "cuda":
        raise Unsupported("graph execution replays CUDA graphs: it needs a CUDA device")
    with torch.inference_mode():
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                step.run()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step.run()
        torch.cuda.synchronize(device)
    return Step(graph.replay)


def fuse_kernels(model: nn.Module, config) -> str:
    """Run ``model`` as the study's framework does: Liger's RMSNorm and fused q+k RoPE where
    ``liger-kernel`` is installed, else torch's ``F.rms_norm`` in place of Hugging Face's
    unfused RMSNorm. Returns which."""
    try:
        from liger_kernel.transformers import apply_liger_kernel_to_llama, apply_liger_kernel_to_qwen2

        patch = apply_liger_kernel_to_qwen2 if config.model_type == "qwen2" else apply_liger_kernel_to_llama
        patch(rope=True, rms_norm=True, swiglu=False, cross_entropy=False, fused_linear_cross_entropy=False,
              model=model)
        return "liger"
    except ImportError:
        pass
    import torch.nn.functional as F

    for module in model.modules():
        if type(module).__name__.endswith("RMSNorm") and hasattr(module, "weight"):
            eps = float(getattr(module, "variance_epsilon", getattr(module, "eps", 1e-6)))
            module.forward = (lambda m, e: lambda x: F.rms_norm(x, (x.shape[-1],), m.weight, e))(module, eps)
    return "torch-rms_norm"


def _static_config(spec: ModelSpec, method: str, s: float, opts: PruneOptions) -> dict[str, int]:
    study = method in VARIANT_NAMES and opts.variant(method) == "study"
    if method == "static-depth" and study:
        # int(s·L) attention and int(s·L) MLP sublayers go: as many whole layers' worth of work
        return dict(num_hidden_layers=spec.layers - int(study_sublayers_removed(spec.layers, s)))
    if method == "static-depth" and opts.granularity == "layer":
        return dict(num_hidden_layers=int(layers_kept(spec, s)))
    if method == "static-width" and study:
        g = int(study_kv_heads(spec, s))
        return dict(num_attention_heads=g * spec.group_size, num_key_value_heads=g,
                    intermediate_size=int(study_ffn(spec, s)))
    if method == "static-width":
        return dict(num_attention_heads=int(pruned_heads(spec, s)),
                    intermediate_size=int(pruned_ffn(spec, s, opts.align)))
    if method == "static-width-hidden":
        return dict(hidden_size=int(study_hidden(spec, s) if study else pruned_hidden(spec, s, opts.align)))
    return {}


def build_hf(spec: ModelSpec, method: str, s: float, device: torch.device, dtype: torch.dtype,
             opts: PruneOptions) -> HfModel:
    """The statically pruned HF model of ``method`` at sparsity ``s`` (random weights, eval)."""
    from transformers import LlamaForCausalLM, Qwen2ForCausalLM

    if method == "semi-structured" and (device.type != "cuda" or dtype == torch.float32):
        raise Unsupported("2:4 semi-structured sparsity needs a CUDA GPU and half precision")
    cfg = hf_config(spec, **_static_config(spec, method, s, opts))
    cls = Qwen2ForCausalLM if spec.arch == "qwen2" else LlamaForCausalLM
    torch.manual_seed(0)
    with torch.device(device):
        model = cls(cfg)
    model = model.to(dtype).eval()
    layers = model.model.layers
    d = cfg.hidden_size
    if method == "static-depth" and opts.granularity == "sublayer" and opts.variant(method) == "pis":
        removed = int(layers_removed(2 * spec.layers, s))
        attn_gone, mlp_gone = (removed + 1) // 2, removed // 2
        n = len(layers)
        # Remove sublayers from the last layers: layer 0 keeps its attention (and its cache).
        for i in range(n):
            layers[i] = PrunedLayer(layers[i], skip_attn=i >= n - attn_gone, skip_mlp=i >= n - mlp_gone)
    elif method == "static-width-hidden" and d < spec.hidden:
        for i in range(len(layers)):
            layers[i] = PrunedLayer(layers[i], shortcut_dim=d).to(device=device, dtype=dtype)
    elif method == "low-rank" and s > 0:
        for layer in layers:
            for path in PROJECTIONS:
                parent, attr = _get(layer, path)
                lin = getattr(parent, attr)
                n_out, k_in = lin.weight.shape
                r = int(study_rank(n_out, k_in, s) if opts.variant(method) == "study"
                        else lowrank_rank(n_out, k_in, s, opts.align))
                setattr(parent, attr, nn.Sequential(
                    nn.Linear(k_in, r, bias=False), nn.Linear(r, n_out, bias=lin.bias is not None),
                ).to(device=device, dtype=dtype))
    elif method == "unstructured" and s > 0:
        # Masked weights run the same dense kernels; mask them anyway so the model is honest.
        g = torch.Generator(device=device).manual_seed(0)
        with torch.no_grad():
            for layer in layers:
                for path in PROJECTIONS:
                    w = getattr(*_get(layer, path)).weight
                    w.mul_(torch.rand(w.shape, generator=g, device=device) >= s)
    elif method == "semi-structured" and s > 0:
        from torch.sparse import to_sparse_semi_structured

        n_sparse = spec.layers if opts.variant(method) == "study" else int(layers_removed(spec.layers, 2.0 * s))
        try:
            for layer in list(layers)[:n_sparse]:
                for path in PROJECTIONS:
                    lin = getattr(*_get(layer, path))
                    lin.weight = nn.Parameter(to_sparse_semi_structured(mask_2to4(lin.weight.detach())),
                                              requires_grad=False)
        except (RuntimeError, ValueError, NotImplementedError) as err:
            raise Unsupported(f"to_sparse_semi_structured: {str(err).splitlines()[0][:120]}") from err
    if opts.weights != "native":
        # Every dense linear of the layers (low-rank factors and shortcut maps too); the LM head
        # only when asked: the op graph of pis.simulator.pruning.quantize_weights.
        quantize_linears(layers, opts.weights, opts.group_size)
        if opts.quantize_head:
            model.lm_head = QuantLinear(model.lm_head, opts.weights, opts.group_size)
    return HfModel(model, cfg, device)
