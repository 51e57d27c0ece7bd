"""A small reference decoder in plain PyTorch that really executes the dynamic pruning families.

Static families run through Hugging Face (:mod:`pis.executors.hf`); the
dynamic ones (``dynamic-depth``, ``sparse-attention``, ``dynamic-width``) need routing that
HF models do not have, so this module implements them op by op after ``simulator/FAMILIES.md``:
router GEMMs, ``torch.topk``, ``index_select`` gathers, compute on the kept tokens only and
``index_add_`` scatters back into the residual stream.

The dense path is the same op list as HF Llama (embedding, RMSNorm, unfused q/k/v, RoPE,
SDPA with GQA, o, residual add, RMSNorm, gate/up, silu·mul, down, add; final norm, lm_head
on the last token in prefill), so its timing can be cross-checked against HF dense.

Weights are random: outputs are meaningless, only shapes and the executed work matter.
Where a literal PyTorch rendering of the spec would add work a real kernel does not do, the
choice made is documented at the spot (KV caches are preallocated with one slot for the new
token in the routed families, so attending over a subset does not copy the whole cache first;
sparse attention picks blocks per KV head so that the gathered K/V stay at KV-head width).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pis.errors import PisError, Unsupported
from pis.executors.base import ModelUnderTest, Step, token_ids
from pis.models import ModelSpec
from pis.pruned import ROUTED_FAMILIES, PruneOptions, ceil_int

#: The families this decoder implements (``dense`` is the cross-check path).
FAMILIES: tuple[str, ...] = ("dense",) + ROUTED_FAMILIES


def _ceil(x: float) -> int:
    # The simulator's rounding (pis.pruned), so kept counts agree exactly.
    return int(ceil_int(x))


@dataclass(frozen=True)
class RefOptions:
    """Routing knobs (the same defaults as :class:`pis.pruned.PruneOptions`)."""

    router_rank: int = 16
    block: int = 64
    ffn_groups: int = 8
    #: dense decode writes the new token into a preallocated cache slot (a lean executor's
    #: static cache) instead of concatenating as HF's DynamicCache does
    inplace_cache: bool = False


class RMSNorm(nn.Module):
    """RMSNorm computed as HF Llama does (in fp32, cast back)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) over the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of ``x`` (..., seq, d) with ``cos``/``sin`` broadcastable to it."""
    return x * cos + rotate_half(x) * sin


class Rotary(nn.Module):
    """cos/sin tables for positions, computed per forward as HF does."""

    def __init__(self, head_dim: int, base: float = 500000.0) -> None:
        super().__init__()
        inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv, persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.to(torch.float32)[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def _linear(k: int, n: int, bias: bool = False) -> nn.Linear:
    return nn.Linear(k, n, bias=bias)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
          mask: torch.Tensor | None = None) -> torch.Tensor:
    gqa = q.shape[1] != k.shape[1]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None,
                                          enable_gqa=gqa)


def gather_blocks(cache: torch.Tensor, idx: torch.Tensor, block: int) -> torch.Tensor:
    """Blocks ``idx`` (B, G, kept) of ``cache`` (B, G, blocks·block, d) as (B, G, kept·block, d).

    One ``index_select`` over the cache viewed as rows of whole blocks: the copy the op graph
    prices. (Advanced indexing ``cache[b, g, idx]`` gives the same tensor through a generic
    index kernel, slower on the CPU for a cold cache.)
    """
    b, g, n, d = cache.shape
    nb, kept = n // block, idx.shape[-1]
    base = torch.arange(b * g, device=idx.device).view(b, g, 1) * nb
    rows = cache.reshape(b * g * nb, block * d).index_select(0, (idx + base).reshape(-1))
    return rows.view(b, g, kept * block, d)


class RefLayer(nn.Module):
    """One decoder layer; ``method`` picks the dense or a routed execution."""

    def __init__(self, spec: ModelSpec, method: str, sparsity: float, opts: RefOptions) -> None:
        super().__init__()
        self.spec, self.method, self.s, self.o = spec, method, float(sparsity), opts
        d, hd, g = spec.hidden, spec.head_dim, spec.kv_heads
        qkv_bias = spec.arch == "qwen2"
        self.ln1, self.ln2 = RMSNorm(d), RMSNorm(d)
        self.k_proj = _linear(d, g * hd, qkv_bias)
        self.v_proj = _linear(d, g * hd, qkv_bias)
        self.width = method == "dynamic-width" and self.s > 0
        if self.width:
            # One q/o and one FFN slice per group, as separate contiguous weights.
            hg, nf = spec.group_size, opts.ffn_groups
            fg = max(1, spec.ffn // nf)
            self.router = _linear(d, g + nf)
            self.q_groups = nn.ModuleList(_linear(d, hg * hd, qkv_bias) for _ in range(g))
            self.o_groups = nn.ModuleList(_linear(hg * hd, d) for _ in range(g))
            self.gate_groups = nn.ModuleList(_linear(d, fg) for _ in range(nf))
            self.up_groups = nn.ModuleList(_linear(d, fg) for _ in range(nf))
            self.down_groups = nn.ModuleList(_linear(fg, d) for _ in range(nf))
        else:
            self.q_proj = _linear(d, spec.heads * hd, qkv_bias)
            self.o_proj = _linear(spec.heads * hd, d)
            self.gate_proj = _linear(d, spec.ffn)
            self.up_proj = _linear(d, spec.ffn)
            self.down_proj = _linear(spec.ffn, d)
        self.depth = method == "dynamic-depth" and self.s > 0
        if self.depth:
            r = opts.router_rank
            self.attn_router = nn.Sequential(_linear(d, r), _linear(r, 1))
            self.mlp_router = nn.Sequential(_linear(d, r), _linear(r, 1))
        self.sparse_attn = method == "sparse-attention" and self.s > 0

    # --- sublayers on a (B, S, D) input -------------------------------------------------------

    def attention(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                  cache: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """norm, q/k/v, rope, attention, o (no residual add). ``cache`` is used in decode."""
        b, s, _ = x.shape
        hd, sp = self.spec.head_dim, self.spec
        h = self.ln1(x)
        q = self.q_proj(h).view(b, s, sp.heads, hd).transpose(1, 2)
        k = self.k_proj(h).view(b, s, sp.kv_heads, hd).transpose(1, 2)
        v = self.v_proj(h).view(b, s, sp.kv_heads, hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is None:
            out = self._sparse_prefill(q, k, v) if self.sparse_attn else _sdpa(q, k, v, causal=True)
        elif self.sparse_attn:
            out = self._sparse_decode(q, k, v, cache)
        elif self.depth or self.o.inplace_cache:
            # Preallocated cache (of the kept sequences) with a free last slot: write the new token.
            kc, vc = cache
            kc[:, :, -1:], vc[:, :, -1:] = k, v
            out = _sdpa(q, kc, vc, causal=False)
        else:
            # HF's DynamicCache concatenates the new token onto the cache (one copy per step).
            kc, vc = cache
            out = _sdpa(q, torch.cat([kc, k], dim=2), torch.cat([vc, v], dim=2), causal=False)
        return self.o_proj(out.transpose(1, 2).reshape(b, s, sp.heads * hd))

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        """norm, gate, up, silu·mul, down (no residual add)."""
        h = self.ln2(x)
        return self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))

    # --- sparse attention (SeerAttention-like) ------------------------------------------------

    def _block_scores(self, q_pool: torch.Tensor, k_pool: torch.Tensor) -> torch.Tensor:
        # q_pool (B, H, nq, d) · k_pool (B, G, nk, d)ᵀ as one GQA batched GEMM: B·H·nq rows.
        b, h, nq, hd = q_pool.shape
        g = k_pool.shape[1]
        sc = torch.matmul(q_pool.reshape(b, g, (h // g) * nq, hd), k_pool.transpose(-1, -2))
        # Heads of one KV group share the block choice, so the gathered K/V stay G heads wide.
        return sc.view(b, g, h // g, nq, -1).sum(2)

    def _sparse_decode(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       cache: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        kc, vc, k_pool, kv_len = cache  # kc: (B, G, blocks·b, d), slot kv_len − 1 is the new token
        bsz, g, n_pad, hd = kc.shape
        blk = self.o.block
        nb = n_pad // blk
        kc[:, :, kv_len - 1:kv_len], vc[:, :, kv_len - 1:kv_len] = k, v
        kept = min(nb, max(1, _ceil((1.0 - self.s) * nb)))
        if kept >= nb:
            return _sdpa(q, kc[:, :, :kv_len], vc[:, :, :kv_len], causal=False)
        sc = self._block_scores(q, k_pool)                       # (B, G, 1, nb)
        idx = torch.topk(sc, kept, dim=-1).indices.squeeze(2)    # (B, G, kept)
        return _sdpa(q, gather_blocks(kc, idx, blk), gather_blocks(vc, idx, blk), causal=False)

    def _sparse_prefill(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        bsz, h, s, hd = q.shape
        g, blk = k.shape[1], self.o.block
        nb = _ceil(s / blk)
        pad = nb * blk - s
        if pad:
            q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        # Block pooling (a memory pass the simulator ignores) and block scores with a causal mask.
        q_pool = q.reshape(bsz, h, nb, blk, hd).mean(3)
        k_pool = k.reshape(bsz, g, nb, blk, hd).mean(3)
        sc = self._block_scores(q_pool, k_pool)                  # (B, G, nb, nb)
        future = torch.ones(nb, nb, dtype=torch.bool, device=q.device).triu(1)
        sc = sc.masked_fill(future, float("-inf"))
        kmax = max(1, _ceil((1.0 - self.s) * nb))
        idx = torch.topk(sc, kmax, dim=-1).indices                # (B, G, nb, kmax), best first
        kb, vb = k.reshape(bsz, g, nb, blk, hd), v.reshape(bsz, g, nb, blk, hd)
        bi = torch.arange(bsz, device=q.device)[:, None, None]
        gi = torch.arange(g, device=q.device)[None, :, None]
        out = torch.empty_like(q)
        # Query block i visits ceil((1−s)(i+1)) of its i+1 causal blocks: (1−s) of the work.
        for i in range(nb):
            n_i = min(i + 1, max(1, _ceil((1.0 - self.s) * (i + 1))))
            sel = idx[:, :, i, :n_i]
            ks = kb[bi, gi, sel].reshape(bsz, g, n_i * blk, hd)
            vs = vb[bi, gi, sel].reshape(bsz, g, n_i * blk, hd)
            out[:, :, i * blk:(i + 1) * blk] = _sdpa(q[:, :, i * blk:(i + 1) * blk], ks, vs, causal=False)
        return out[:, :, :s]

    # --- routed sublayers (dynamic depth) ----------------------------------------------------

    def _route_tokens(self, router: nn.Module, x: torch.Tensor, keep: int) -> torch.Tensor:
        """Flat row indices of the ``keep`` best tokens of each sequence (prefill) or batch (decode)."""
        b, s, d = x.shape
        score = router(x).view(b, s)
        if s == 1:
            # Decode: each token decides alone; a top-k over the B scores keeps exactly T_k of them.
            return torch.topk(score.view(1, b), keep, dim=-1).indices.view(-1)
        idx = torch.topk(score, keep, dim=-1).indices
        return (idx + torch.arange(b, device=x.device)[:, None] * s).view(-1)

    def _depth_forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                       cache: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        b, s, d = x.shape
        flat = x.reshape(b * s, d)
        if s > 1:
            keep, shape = _ceil((1.0 - self.s) * s), lambda t: t.view(b, -1, d)
        else:
            keep, shape = _ceil((1.0 - self.s) * b), lambda t: t.view(-1, 1, d)
        c, sn = (cos[:keep], sin[:keep]) if s > 1 else (cos, sin)
        rows = self._route_tokens(self.attn_router, x, keep)
        xk = shape(flat.index_select(0, rows))
        flat.index_add_(0, rows, self.attention(xk, c, sn, cache).reshape(-1, d))
        rows = self._route_tokens(self.mlp_router, flat.view(b, s, d), keep)
        xk = flat.index_select(0, rows)
        flat.index_add_(0, rows, self.mlp(xk))
        return flat.view(b, s, d)

    # --- dynamic width (WIDE-like) -----------------------------------------------------------

    def _width_forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                       cache: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        sp, hd = self.spec, self.spec.head_dim
        b, s, d = x.shape
        g, nf, hg = sp.kv_heads, self.o.ffn_groups, sp.group_size
        t = b * s
        flat = x.reshape(t, d)
        h = self.ln1(x)
        logits = self.router(h)                                  # (B, S, G + n_f)
        # Every group takes exactly its kept share of tokens (one top-k over tokens per group):
        # per sequence in prefill (so attention keeps its batch structure), over the batch in decode.
        if s > 1:
            keep = _ceil((1.0 - self.s) * s)
            idx = torch.topk(logits.transpose(1, 2), keep, dim=-1).indices   # (B, G+nf, keep)
            rows = (idx + torch.arange(b, device=x.device)[:, None, None] * s).transpose(0, 1)
            rows = rows.reshape(g + nf, -1)
        else:
            # Decode: each token picks its top ceil((1-s)G) head groups and ceil((1-s)n_f) FFN
            # groups (token choice; a group-picks-tokens router would run every group at batch 1).
            # The picks are spread round-robin, as a load-balanced router would, so each group
            # serves floor or ceil of its share and a group nobody picked does not run.
            kh, kf = max(1, _ceil((1.0 - self.s) * g)), max(1, _ceil((1.0 - self.s) * nf))
            flat_logits = logits.view(b, g + nf)
            torch.topk(flat_logits[:, :g], kh, dim=-1)
            torch.topk(flat_logits[:, g:], kf, dim=-1)
            rows = [torch.tensor([j for j in range(b) if (gi - j * kh) % g < kh], dtype=torch.long,
                                 device=x.device) for gi in range(g)]
            rows += [torch.tensor([j for j in range(b) if (fi - j * kf) % nf < kf], dtype=torch.long,
                                  device=x.device) for fi in range(nf)]
        hflat = h.reshape(t, d)
        k = apply_rope(self.k_proj(h).view(b, s, g, hd).transpose(1, 2), cos, sin)
        v = self.v_proj(h).view(b, s, g, hd).transpose(1, 2)
        if cache is not None:
            kc, vc = cache                                       # (B, G, C + 1, d), last slot free
            kc[:, :, -1:], vc[:, :, -1:] = k, v
            k, v = kc, vc
        out_flat = flat
        pos = torch.arange(s, device=x.device)
        for gi in range(g):
            r = rows[gi]
            if len(r) == 0:
                continue
            hq = hflat.index_select(0, r)
            if s > 1:
                q = self.q_groups[gi](hq).view(b, keep, hg, hd).transpose(1, 2)
                qpos = idx[:, gi, :]                             # (B, keep) positions
                q = apply_rope(q, cos[qpos].unsqueeze(1), sin[qpos].unsqueeze(1))
                mask = (qpos[:, None, :, None] >= pos[None, None, None, :])
                a = _sdpa(q, k[:, gi:gi + 1], v[:, gi:gi + 1], causal=False, mask=mask)
            else:
                q = self.q_groups[gi](hq).view(len(r), 1, hg, hd).transpose(1, 2)
                q = apply_rope(q, cos, sin)
                kg = k[:, gi:gi + 1].index_select(0, r)
                vg = v[:, gi:gi + 1].index_select(0, r)
                a = _sdpa(q, kg, vg, causal=False)
            a = a.transpose(1, 2).reshape(-1, hg * hd)
            out_flat.index_add_(0, r, self.o_groups[gi](a))
        h2 = self.ln2(out_flat.view(b, s, d)).reshape(t, d)
        for fi in range(nf):
            r = rows[g + fi]
            if len(r) == 0:
                continue
            hx = h2.index_select(0, r)
            y = self.down_groups[fi](F.silu(self.gate_groups[fi](hx)) * self.up_groups[fi](hx))
            out_flat.index_add_(0, r, y)
        return out_flat.view(b, s, d)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: tuple | None = None) -> torch.Tensor:
        if self.depth:
            return self._depth_forward(x, cos, sin, cache)
        if self.width:
            return self._width_forward(x, cos, sin, cache)
        x = x + self.attention(x, cos, sin, cache)
        return x + self.mlp(x)


class RefDecoder(nn.Module):
    """Decoder-only LM following FAMILIES.md for ``dense`` and the routed families."""

    def __init__(self, spec: ModelSpec, method: str = "dense", sparsity: float = 0.0,
                 opts: RefOptions | None = None) -> None:
        super().__init__()
        if method not in FAMILIES:
            raise PisError(f"the reference decoder runs {', '.join(FAMILIES)}, not {method!r}")
        self.spec, self.method, self.sparsity = spec, method, float(sparsity)
        self.opts = opts or RefOptions()
        self.embed = nn.Embedding(spec.vocab, spec.hidden)
        self.layers = nn.ModuleList(RefLayer(spec, method, sparsity, self.opts) for _ in range(spec.layers))
        self.norm = RMSNorm(spec.hidden)
        self.lm_head = nn.Linear(spec.hidden, spec.vocab, bias=False)
        self.rotary = Rotary(spec.head_dim)

    def prefill(self, ids: torch.Tensor, logits: bool = True) -> torch.Tensor:
        """Logits of the last token of each sequence, (B, 1, V), for a (B, S) prompt
        (``logits=False``: the final hidden states, without the LM head)."""
        x = self.embed(ids)
        cos, sin = self.rotary(torch.arange(ids.shape[1], device=ids.device), x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin)
        x = self.norm(x)
        return self.lm_head(x[:, -1:]) if logits else x

    def decode(self, ids: torch.Tensor, caches: list[tuple], context: int, logits: bool = True) -> torch.Tensor:
        """Logits (B, 1, V) of one decode step of (B, 1) tokens after ``context`` cached ones
        (``logits=False``: the final hidden states)."""
        x = self.embed(ids)
        cos, sin = self.rotary(torch.tensor([context], device=ids.device), x.dtype)
        for layer, cache in zip(self.layers, caches):
            x = layer(x, cos, sin, cache)
        x = self.norm(x)
        return self.lm_head(x) if logits else x

    def make_caches(self, batch: int, context: int, *, generator: torch.Generator | None = None) -> list[tuple]:
        """Random KV caches of ``context`` tokens in the layout each family's decode step reads.

        dense: (B, G, C, d) that the step concatenates onto (as HF's DynamicCache does), or
        (B, G, C + 1, d) with a free slot with ``inplace_cache``;
        dynamic-depth: the T_k kept sequences' caches of ceil((1−s)·C) tokens plus a free slot;
        dynamic-width: (B, G, C + 1, d) with a free slot; sparse-attention: C + 1 slots padded
        to whole blocks, plus pooled keys per block.
        """
        sp, s = self.spec, self.sparsity
        p = next(self.parameters())
        g, hd = sp.kv_heads, sp.head_dim
        kw = dict(device=p.device, dtype=p.dtype, generator=generator)
        if self.method == "dynamic-depth" and s > 0:
            shape = (_ceil((1.0 - s) * batch), g, _ceil((1.0 - s) * context) + 1, hd)
        elif self.method == "sparse-attention" and s > 0:
            nb = _ceil((context + 1) / self.opts.block)
            shape = (batch, g, nb * self.opts.block, hd)
            return [(torch.randn(shape, **kw), torch.randn(shape, **kw),
                     torch.randn((batch, g, nb, hd), **kw), context + 1) for _ in self.layers]
        elif (self.method == "dynamic-width" and s > 0) or self.opts.inplace_cache:
            shape = (batch, g, context + 1, hd)
        else:
            shape = (batch, g, context, hd)
        return [(torch.randn(shape, **kw), torch.randn(shape, **kw)) for _ in self.layers]


# --- the executor: timed steps of a built reference decoder -----------------------------------

class RefModel(ModelUnderTest):
    """The reference decoder; decode gets fresh random caches before every step."""

    backend = "reference"

    def __init__(self, model: RefDecoder, device: torch.device) -> None:
        self.model, self.device = model, device

    def step(self, phase: str, batch: int, seq_len: int, context: int, logits: bool = True) -> Step:
        """``logits=False`` leaves out the LM head (the whole-decoder profile rows)."""
        m, spec = self.model, self.model.spec
        if phase == "prefill":
            ids = token_ids(spec.vocab, batch, seq_len, self.device)
            return Step(lambda: m.prefill(ids, logits=logits))
        ids = token_ids(spec.vocab, batch, 1, self.device)
        template = m.make_caches(batch, context, generator=None)
        state: dict = {}

        def setup() -> None:
            # The routed steps write the new token into the cache in place; refresh the copies.
            state["caches"] = [tuple(t.clone() if torch.is_tensor(t) else t for t in c) for c in template]

        return Step(lambda: m.decode(ids, state["caches"], context, logits=logits), setup)

    def graph_step(self, phase: str, batch: int, seq_len: int, context: int, logits: bool = True) -> Step:
        """:meth:`step` captured in one CUDA graph (its caches set up once: a replay writes the new
        token into the same slot). Routing whose index tensors are built on the host each step
        cannot be captured: :class:`~pis.errors.Unsupported`."""
        from pis.executors.hf import capture

        step = self.step(phase, batch, seq_len, context, logits)
        if step.setup is not None:
            step.setup()
        try:
            return capture(Step(step.run), self.device)
        except RuntimeError as err:  # a host sync or host-built tensor inside the step
            raise Unsupported(f"not capturable in a CUDA graph: {' '.join(str(err).split())[:120]}") from err


def build_reference(spec: ModelSpec, method: str, s: float, device: torch.device,
                    dtype: torch.dtype, opts: PruneOptions) -> RefModel:
    """The reference decoder of ``method`` at sparsity ``s`` (random weights, eval)."""
    torch.manual_seed(0)
    # The executor keeps the cache discipline the prediction assumes: --kv-cache preallocated
    # (what :meth:`pis.validate.suites.Config.options` asks for the reference decoder) writes
    # the new token in place.
    ref_opts = RefOptions(router_rank=opts.router_rank, block=opts.block, ffn_groups=opts.ffn_groups,
                          inplace_cache=opts.kv_cache == "preallocated")
    with torch.device(device):
        model = RefDecoder(spec, method, s, ref_opts)
    return RefModel(model.to(dtype).eval(), device)
