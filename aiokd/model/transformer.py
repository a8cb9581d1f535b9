"""The encoder-decoder Transformer whose prefixes are the students.

Vaswani et al. (2017), as in the AIO-KD paper: post-norm by default (pre-norm as an option),
sinusoidal positions, one joint vocabulary whose embedding matrix serves the encoder input, the
decoder input and the output projection.  Attention runs through
``F.scaled_dot_product_attention`` (when training in half precision on a CPU, through two
batched matrix products, which are faster there; these CPU kernels are in
:mod:`aiokd.model.kernels`).

A student ``(l_e, l_d)``, a pair of ints, is the bottom ``l_e`` encoder and bottom ``l_d``
decoder layers:

    logits = model(src, prev_tgt, enc_layers=l_e, dec_layers=l_d)

Because every student is a prefix, one encoder pass yields the memory of every student
(``encode``), and one decoder pass over memory ``l_e`` yields the output of
every student ``(l_e, 1..l_d)`` (``forward_students``).

Shapes: ``B`` batch, ``S`` source length, ``T`` target length, ``C`` model width, ``H`` heads,
``V`` vocabulary.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from aiokd.config import ModelConfig
from aiokd.model.kernels import attention_products, dropout


def sinusoidal_positions(max_positions: int, dim: int) -> Tensor:
    """``PE[p, i] = sin(p / 10000^(i / (C/2 - 1)))`` for the first half of the channels and the
    matching cosine for the second half (tensor2tensor layout). Returns ``(max_positions, C)``."""
    half = dim // 2
    scale = math.log(10000.0) / max(half - 1, 1)
    frequencies = torch.exp(torch.arange(half, dtype=torch.float32) * -scale)
    angles = torch.arange(max_positions, dtype=torch.float32)[:, None] * frequencies[None, :]
    table = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if dim % 2:
        table = torch.cat([table, torch.zeros(max_positions, 1)], dim=1)
    return table


def marian_positions(max_positions: int, dim: int) -> Tensor:
    """``PE[p, j] = sin(p / 10000^(2j / C))`` for the first ``ceil(C/2)`` channels and
    ``cos(p / 10000^(2j / C))`` for the others, computed in float64 (Marian's layout).
    Returns ``(max_positions, C)`` float32."""
    exponents = torch.arange(dim, dtype=torch.float64).div(2, rounding_mode="floor") * 2 / dim
    angles = torch.arange(max_positions, dtype=torch.float64)[:, None] / 10000.0 ** exponents
    return torch.cat([torch.sin(angles[:, 0::2]), torch.cos(angles[:, 1::2])], dim=1).float()


POSITION_TABLES = {"tensor2tensor": sinusoidal_positions, "marian": marian_positions}
"""``model.positions`` -> the function building the position table."""

ACTIVATION_FUNCTIONS = {"relu": F.relu, "gelu": F.gelu, "swish": F.silu, "silu": F.silu}
"""``model.activation`` -> the feed-forward activation."""


GPU_ATTENTION_KERNELS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                         SDPBackend.MATH]
"""The fused attention kernels :func:`attention` lets PyTorch choose from on a GPU.  cuDNN's is left
out: it prepares a plan for every new ``(B, H, T, S)``, and with batches of varying lengths an
H200's training step of the ``small`` preset took 427 ms with it, 63 ms without
(``benchmarks/results/speed-gpu-h200.md``)."""


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool,
              dropout_p: float) -> Tensor:
    """``softmax(q k^T / sqrt(d) + mask) v``.

    ``q (B, H, T, d)``, ``k``/``v (B, H, S, d)``, ``mask (B, 1, 1, S)`` True where allowed.
    Through ``F.scaled_dot_product_attention``, except when training in half precision on a CPU:
    there its kernels take two to four times as long, forward and backward, as two batched
    matrix products around a float32 softmax (:func:`attention_products`;
    ``benchmarks/attention_kernels.py``).  At inference PyTorch's flash kernel is the fastest,
    and it reads the memory's keys in place at every decoding step.  On a GPU the kernel is one
    of :data:`GPU_ATTENTION_KERNELS`.
    """
    on_cpu = q.device.type == "cpu"
    if on_cpu and q.dtype in (torch.bfloat16, torch.float16) and torch.is_grad_enabled():
        return attention_products(q, k, v, mask, causal, dropout_p)
    with contextlib.nullcontext() if on_cpu else sdpa_kernel(GPU_ATTENTION_KERNELS):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                              dropout_p=dropout_p)


def _split_heads(x: Tensor, heads: int) -> Tensor:
    """``(B, T, C)`` -> ``(B, H, T, C/H)``."""
    b, t, c = x.shape
    return x.view(b, t, heads, c // heads).transpose(1, 2)


def _merge_heads(x: Tensor) -> Tensor:
    """``(B, H, T, C/H)`` -> ``(B, T, C)``."""
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


def _append(past: Tensor, new: Tensor, rows: Tensor | None) -> Tensor:
    """``cat([past[rows], new], dim=2)`` in one copy: ``past (B', H, t, d)``, ``new (B, H, 1, d)``,
    ``rows (B,)`` (None: all rows in order)."""
    b, h, t, d = past.shape
    out = past.new_empty(new.shape[0], h, t + 1, d)
    if rows is None:
        out[:, :, :t] = past
    else:
        torch.index_select(past, 0, rows, out=out[:, :, :t])
    out[:, :, t:] = new
    return out


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused query/key/value projection."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor | None = None, causal: bool = False,
                cache: dict[str, Tensor] | None = None) -> Tensor:
        """``x (B, T, C)``; ``mask (B, 1, 1, T)`` True where a key may be attended to.

        With ``cache`` (incremental decoding, ``T = 1``) the new key and value are appended to
        ``cache["k"], cache["v"]`` of shape ``(B', H, t, C/H)`` and the query attends to all of
        them; ``cache["rows"] (B,)``, when present, first picks the past of each row (beam search
        reorders its beams so), in the same copy as the append.
        """
        q, k, v = (_split_heads(part, self.heads) for part in self.qkv(x).chunk(3, dim=-1))
        if cache is not None:
            if "k" in cache:
                rows = cache.pop("rows", None)
                k, v = _append(cache["k"], k, rows), _append(cache["v"], v, rows)
            cache["k"], cache["v"] = k, v
            causal = False
        y = attention(q, k, v, mask, causal, self.dropout if self.training else 0.0)
        return self.out(_merge_heads(y))


class CrossAttention(nn.Module):
    """Multi-head attention from the decoder to the encoder memory."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def memory(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values of the memory ``(B, S, C)``, each ``(B, H, S, C/H)``."""
        k, v = self.kv(memory).chunk(2, dim=-1)
        return _split_heads(k, self.heads), _split_heads(v, self.heads)

    def forward(self, x: Tensor, keys_values: tuple[Tensor, Tensor], mask: Tensor) -> Tensor:
        q = _split_heads(self.q(x), self.heads)
        y = attention(q, *keys_values, mask, False, self.dropout if self.training else 0.0)
        return self.out(_merge_heads(y))


class FeedForward(nn.Module):
    """``FFN(x) = W_2 dropout(act(W_1 x + b_1)) + b_2``, ``act`` ReLU unless ``activation`` names
    another of :data:`ACTIVATION_FUNCTIONS`."""

    def __init__(self, dim: int, hidden: int, dropout: float, activation: str = "relu"):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.dropout = dropout
        self.activation = ACTIVATION_FUNCTIONS[activation]

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(dropout(self.activation(self.fc1(x)), self.dropout, self.training))


class Residual(nn.Module):
    """One sub-layer with its residual connection and layer norm.

    post-norm: ``x = LN(x + dropout(f(x)))``;  pre-norm: ``x = x + dropout(f(LN(x)))``.

    Under autocast the residual stream ``x`` stays float32 and ``f(x)`` comes out in half
    precision; ``f(x)`` is cast to float32 before the sum, since on a CPU PyTorch adds two dtypes
    more slowly than it casts and adds one.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.dropout, self.pre_norm = cfg.dropout, cfg.pre_norm

    def forward(self, x: Tensor, sublayer, *args, **kwargs) -> Tensor:
        if self.pre_norm:
            update = sublayer(self.norm(x), *args, **kwargs)
            return x + dropout(update, self.dropout, self.training).to(x.dtype)
        update = sublayer(x, *args, **kwargs)
        return self.norm(x + dropout(update, self.dropout, self.training).to(x.dtype))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.self_attn = SelfAttention(cfg.d_model, cfg.heads, cfg.attention_dropout)
        self.self_attn_block = Residual(cfg)
        self.ffn = FeedForward(cfg.d_model, cfg.ffn_dim, cfg.activation_dropout,
                               cfg.activation)
        self.ffn_block = Residual(cfg)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = self.self_attn_block(x, self.self_attn, mask)
        return self.ffn_block(x, self.ffn)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.self_attn = SelfAttention(cfg.d_model, cfg.heads, cfg.attention_dropout)
        self.self_attn_block = Residual(cfg)
        self.cross_attn = CrossAttention(cfg.d_model, cfg.heads, cfg.attention_dropout)
        self.cross_attn_block = Residual(cfg)
        self.ffn = FeedForward(cfg.d_model, cfg.ffn_dim, cfg.activation_dropout,
                               cfg.activation)
        self.ffn_block = Residual(cfg)

    def forward(self, x: Tensor, memory_kv: tuple[Tensor, Tensor], memory_mask: Tensor,
                cache: dict[str, Tensor] | None = None) -> Tensor:
        """Teacher-forced: ``x (B, T, C)``, memory keys/values ``(B, H, S, C/H)``.

        Incremental (``cache`` given): ``x (n * w, 1, C)`` holds the ``w`` beams of each of the
        ``n`` sentences whose memory is ``(n, H, S, C/H)``; the ``w`` beams of a sentence are its
        ``w`` cross-attention queries, so the memory is neither copied per beam nor read ``w``
        times.
        """
        x = self.self_attn_block(x, self.self_attn, None, cache is None, cache)
        sentences = memory_mask.shape[0]
        grouped = x.reshape(sentences, -1, x.shape[-1])
        x = self.cross_attn_block(grouped, self.cross_attn, memory_kv, memory_mask).view_as(x)
        return self.ffn_block(x, self.ffn)


def _select(hidden: Tensor, select: Tensor | None) -> Tensor:
    return hidden if select is None else hidden[select]


@dataclass
class Encoded:
    """Encoder output for one batch.

    Attributes:
        states: output of every encoder layer run, ``states[l-1]`` is layer ``l``, each (B, S, C).
        mask: ``(B, 1, 1, S)``, True at real source tokens.
    """

    states: list[Tensor]
    mask: Tensor


class Transformer(nn.Module):
    """Teacher and students in one module; see the module docstring."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=cfg.pad_id)
        self.register_buffer("positions", POSITION_TABLES[cfg.positions](cfg.max_positions,
                                                                         cfg.d_model),
                             persistent=False)
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.enc_layers))
        self.decoder = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.dec_layers))
        eps = cfg.layer_norm_eps
        self.encoder_norm = nn.LayerNorm(cfg.d_model, eps=eps) if cfg.pre_norm else None
        self.decoder_norm = nn.LayerNorm(cfg.d_model, eps=eps) if cfg.pre_norm else None
        self.register_buffer("logits_bias",
                             torch.zeros(cfg.vocab_size) if cfg.final_logits_bias else None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform projections, zero biases, ``N(0, C^-1/2)`` embeddings (as fairseq)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.embed.weight, mean=0.0, std=self.cfg.d_model**-0.5)
        with torch.no_grad():
            self.embed.weight[self.cfg.pad_id].zero_()

    @property
    def teacher(self) -> tuple[int, int]:
        return (self.cfg.enc_layers, self.cfg.dec_layers)

    def compile_layers(self) -> None:
        """Run every encoder and decoder layer through ``torch.compile`` with dynamic shapes:
        one graph for the encoder layers and one for the decoder layers, reused by every layer,
        every student and every batch shape.  Parameter names are unchanged."""
        for layer in [*self.encoder, *self.decoder]:
            layer.compile(dynamic=True)

    def embed_tokens(self, tokens: Tensor, offset: int = 0) -> Tensor:
        """``sqrt(C) * E[tokens] + PE[offset + t]`` (without ``sqrt(C)`` unless
        ``model.scale_embedding``), then dropout. ``(B, T)`` -> ``(B, T, C)``."""
        t = tokens.shape[1]
        if offset + t > self.cfg.max_positions:
            raise ValueError(f"sequence of {offset + t} tokens exceeds model.max_positions")
        scale = math.sqrt(self.cfg.d_model) if self.cfg.scale_embedding else 1.0
        x = self.embed(tokens) * scale + self.positions[offset:offset + t]
        return dropout(x, self.cfg.dropout, self.training)

    def encode(self, src: Tensor, layers: int | None = None) -> Encoded:
        """Run the bottom ``layers`` encoder layers over ``src (B, S)``.

        Every layer's output is kept, so every shallower student's memory comes from this pass.
        """
        layers = self.cfg.enc_layers if layers is None else layers
        mask = (src != self.cfg.pad_id)[:, None, None, :]
        x = self.embed_tokens(src)
        states = []
        for layer in self.encoder[:layers]:
            x = layer(x, mask)
            states.append(x)
        return Encoded(states, mask)

    def memory(self, encoded: Encoded, layers: int) -> Tensor:
        """The memory of a student with ``layers`` encoder layers, ``(B, S, C)``."""
        x = encoded.states[layers - 1]
        return self.encoder_norm(x) if self.encoder_norm is not None else x

    def decode(self, prev_tgt: Tensor, memory: Tensor, memory_mask: Tensor,
               layers: int | None = None) -> list[Tensor]:
        """Run the bottom ``layers`` decoder layers (teacher-forced) over ``prev_tgt (B, T)``.

        Returns the hidden states ``(B, T, C)`` of every layer, ``[l-1]`` for layer ``l``.
        """
        layers = self.cfg.dec_layers if layers is None else layers
        x = self.embed_tokens(prev_tgt)
        states = []
        for layer in self.decoder[:layers]:
            x = layer(x, layer.cross_attn.memory(memory), memory_mask)
            states.append(x)
        return states

    def project(self, hidden: Tensor) -> Tensor:
        """Output logits through the shared embedding, ``E h + b`` with ``b`` the fixed
        ``logits_bias`` of ``model.final_logits_bias`` (else none): ``(B, T, C)`` -> ``(B, T, V)``.
        """
        if self.decoder_norm is not None:
            hidden = self.decoder_norm(hidden)
        return F.linear(hidden, self.embed.weight, self.logits_bias)

    def forward(self, src: Tensor, prev_tgt: Tensor, enc_layers: int | None = None,
                dec_layers: int | None = None, select: Tensor | None = None) -> Tensor:
        """Logits ``(B, T, V)`` of student ``(enc_layers, dec_layers)`` (default: the teacher), or
        ``(N, V)`` at the positions where ``select (B, T)`` is True."""
        return self.project(self.hidden(src, prev_tgt, enc_layers, dec_layers, select))

    def hidden(self, src: Tensor, prev_tgt: Tensor, enc_layers: int | None = None,
               dec_layers: int | None = None, select: Tensor | None = None) -> Tensor:
        """The last decoder layer's output that :meth:`forward` projects, ``(B, T, C)`` or
        ``(N, C)``."""
        encoded = self.encode(src, enc_layers)
        memory = self.memory(encoded, len(encoded.states))
        hidden = self.decode(prev_tgt, memory, encoded.mask, dec_layers)[-1]
        return _select(hidden, select)

    def forward_students(self, src: Tensor, prev_tgt: Tensor, students: list[tuple[int, int]],
                         reuse_prefix: bool = True, select: Tensor | None = None,
                         project: bool = True) -> dict[tuple[int, int], Tensor]:
        """Logits ``(B, T, V)`` of each distinct student in ``students``; with a boolean ``select
        (B, T)`` only the ``N`` selected positions are projected, giving ``(N, V)``.  With
        ``project=False`` the final hidden states ``(B, T, C)`` or ``(N, C)`` instead, for the
        caller to :meth:`project`.

        ``reuse_prefix``: one encoder pass keeps every layer's output; then one decoder pass per
        distinct ``l_e``, as deep as the deepest ``l_d`` asked for with that ``l_e``, yields every
        student sharing that memory.  Otherwise each student runs on its own, as in the reference
        implementation (every sampled student then gets its own dropout noise).
        """
        wanted = list(dict.fromkeys(students))
        output = self.project if project else (lambda hidden: hidden)
        if not reuse_prefix:
            return {s: output(self.hidden(src, prev_tgt, *s, select=select)) for s in wanted}
        encoded = self.encode(src, max(le for le, _ in wanted))
        found = {}
        for le in sorted({le for le, _ in wanted}, reverse=True):
            depth = max(ld for e, ld in wanted if e == le)
            states = self.decode(prev_tgt, self.memory(encoded, le), encoded.mask, depth)
            for e, ld in wanted:
                if e == le:
                    found[(e, ld)] = output(_select(states[ld - 1], select))
        return {s: found[s] for s in wanted}

    def decode_step(self, tokens: Tensor, memory_kv: list[tuple[Tensor, Tensor]],
                    memory_mask: Tensor, caches: list[dict[str, Tensor]], step: int) -> Tensor:
        """Incremental decoding of one position for the student with ``len(memory_kv)`` decoder
        layers.

        ``tokens (n * w, 1)`` is the previous output token of the ``w`` beams of each of ``n``
        sentences (sentence-major); ``memory_kv[l]`` the keys and values ``(n, H, S, C/H)`` of the
        memory for layer ``l`` (from :meth:`memory_keys_values`), ``memory_mask (n, 1, 1, S)``;
        ``caches[l]`` holds that layer's past self-attention keys and values, one row per beam,
        and grows by one position.  Returns logits ``(n * w, V)`` in float32.
        """
        x = self.embed_tokens(tokens, offset=step)
        for layer, kv, cache in zip(self.decoder[:len(memory_kv)], memory_kv, caches, strict=True):
            x = layer(x, kv, memory_mask, cache)
        return self.project(x[:, -1]).float()

    def memory_keys_values(self, memory: Tensor, dec_layers: int) -> list[tuple[Tensor, Tensor]]:
        """Cross-attention keys and values of the memory for each of the bottom ``dec_layers``,
        contiguous: incremental decoding reads them at every step."""
        return [tuple(t.contiguous() for t in layer.cross_attn.memory(memory))
                for layer in self.decoder[:dec_layers]]

    def num_parameters(self, student: tuple[int, int] | None = None,
                       embeddings: bool = True) -> int:
        """Parameters a student uses (default: the teacher), with or without the embeddings."""
        le, ld = student or self.teacher
        modules = [*self.encoder[:le], *self.decoder[:ld], self.encoder_norm, self.decoder_norm]
        count = sum(p.numel() for m in modules if m is not None for p in m.parameters())
        return count + (self.embed.weight.numel() if embeddings else 0)
