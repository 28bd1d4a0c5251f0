r"""Activation memory of a LLaMA training step: the tensors autograd saves for backward.

The formula walks the model's decoder layers (their real modules, usually on ``device="meta"``)
and adds up, for a micro-batch of ``b`` sequences of ``s`` tokens (``T = b·s``), the bytes of
every tensor Hugging Face's ``LlamaForCausalLM`` forward saves, counting a storage once when
several ops save it. ``tests/test_memory.py`` checks it against a measurement (saved-tensor hooks
on a real model) for float32, pure bf16 and autocast, SDPA and eager attention, GaLore/full-rank,
LoRA and Low-Rank, with and without activation checkpointing.

Notation: hidden ``h``, MLP width ``f``, heads ``a``, KV heads ``k``, head dim ``d = h/a``, vocab
``V``; ``β`` bytes of the compute dtype (4 in float32, 2 in bf16/fp16 and under autocast), ``σ``
bytes of the residual stream (the parameters' dtype: 4 in float32 and mixed precision, 2 in pure
16-bit). With every weight trainable (GaLore, full-rank), one decoder layer saves

=============================  ==============================  =================================
tensor                         saved by                        bytes
=============================  ==============================  =================================
layer input, as float32        RMSNorm's ``pow``/``mul``       ``4Th`` (a float32 copy unless σ=4)
1/rms                          RMSNorm's ``rsqrt``/``mul``     ``4T``
normalised input               RMSNorm's ``weight *``          ``σTh``
attention input                q/k/v ``Linear`` (shared)       ``σTh`` (autocast: 3 copies ``βTh``)
q, k, v after RoPE             SDPA (fused kernel)             ``βT(h + 2kd)``
attention output               SDPA, and o_proj (same storage) ``βTh``
log-sum-exp                    SDPA                            ``4·b·a·s``
second RMSNorm                 as the first                    ``(4 + σ)Th + 4T``
MLP input                      gate/up ``Linear`` (shared)     ``σTh`` (autocast: 2 copies ``βTh``)
gate out, SiLU out, up out     SiLU and the product            ``3βTf``
product (down_proj input)      down_proj                       ``βTf``
=============================  ==============================  =================================

so without GQA (k = a) and outside autocast one layer saves
``(8 + 4σ + 4β)Th + 4βTf + 8T + 4aT`` bytes: float32 ``40Th + 16Tf + 8T + 4aT``, pure bf16
``24Th + 8Tf + 8T + 4aT``. Eager attention saves q, k, v at full heads (k and v repeated for
GQA), the float32 softmax ``4·b·a·s²`` (plus its ``β`` copy when β≠4) and a contiguous o_proj
input ``βTh`` instead of the SDPA output and log-sum-exp. Under autocast every ``Linear`` also
saves its ``β``-byte copy of the weight (``β·in·out``), and inputs of another dtype are cast (one
copy per ``Linear``). Once per model: the token ids (``8T``, by the embedding), RoPE's cos and sin
(``2·s·d·σ``; position ids have batch 1), the final RMSNorm, the lm_head input ``σTh`` and the
loss: float32 log-softmax ``4TV``, the shifted labels ``8T`` and a 4-byte total weight. The logits
themselves are not kept (a loop that keeps only ``.loss`` frees them before backward).

Frozen weights save less: a ``Linear`` saves its input only when its weight is trainable (the
gradient of a frozen weight is never computed), ``weight *`` of RMSNorm saves the normalised input
only when the norm weight trains, and nothing upstream of the first trainable parameter is saved.
LoRA (peft) adds per adapter its ``A`` output ``T·r`` (in the adapter's dtype) and, when the
adapter's dtype differs from its input's, a cast copy of that input; Low-Rank ``B A`` saves the
input of ``A`` and ``A``'s output ``T·r``.

Activation checkpointing (every decoder layer, as ``model.gradient_checkpointing_enable()``):
only each layer's input ``σTh`` stays from forward to backward; backward recomputes one layer at
a time, so the peak is those inputs plus the larger of the head's saved tensors and one layer's
(less its input where the norm saves the input itself, σ=4, and plus the token ids, freed last).

Assumptions: SDPA runs a fused kernel (flash / memory-efficient / the CPU flash kernel), which is
what Hugging Face picks without a padding mask; GQA runs through SDPA's ``enable_gqa``; dropout is
0; position ids are the default. The value is the peak of saved tensors; transient buffers
(the logits and their gradient, kernel workspaces, the gradient flowing back through the
residual stream) are not part of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from galorekit.memory.setup import TrainingSetup
from galorekit.methods.adapters.low_rank import LowRankLinear

_FP32 = torch.float32


def _size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype, device="meta").element_size()


@dataclass(frozen=True)
class Term:
    """One saved tensor (or a group of equal ones) of the forward pass."""

    scope: str
    name: str
    nbytes: int


@dataclass
class ActivationEstimate:
    """Saved-for-backward bytes of one micro-batch.

    ``total`` is the peak (at the end of the forward pass, or during the recomputation of a
    checkpointed layer); ``layers`` holds each decoder layer's saved bytes without checkpointing,
    ``head`` the embedding/final norm/lm_head/loss part, ``shared`` what all layers share (RoPE
    tables); ``checkpointed_inputs`` the layer inputs kept under checkpointing (0 without).
    """

    total: int
    layers: list[int]
    head: int
    shared: int
    checkpointed_inputs: int
    terms: list[Term] = field(default_factory=list)


# ---- the model's structure -----------------------------------------------------------------------
@dataclass(frozen=True)
class _Op:
    """One matmul ``y = x Wᵀ``: weight dtype, trainability, peft's input cast."""

    in_features: int
    out_features: int
    weight_dtype: torch.dtype
    trainable: bool
    cast_input_to: torch.dtype | None = None


def _op(weight: torch.Tensor, cast: torch.dtype | None = None) -> _Op:
    out_f, in_f = weight.shape
    return _Op(int(in_f), int(out_f), weight.dtype, bool(weight.requires_grad), cast)


def _chains(module: nn.Module, name: str) -> list[list[_Op]]:
    """The matmul chains a projection runs on its input (one per path that reads the input)."""
    if isinstance(module, LowRankLinear):
        return [[_op(module.A), _op(module.B)]]
    if hasattr(module, "lora_A") and hasattr(module, "get_base_layer"):  # a peft LoRA layer
        chains = _chains(module.get_base_layer(), name)
        cast = getattr(module, "cast_input_dtype_enabled", True)
        for adapter in module.active_adapters:
            if adapter not in module.lora_A:
                continue
            dropout = module.lora_dropout[adapter]
            if isinstance(dropout, nn.Dropout) and dropout.p > 0:
                raise ValueError(
                    f"{name}: LoRA dropout {dropout.p} is not modelled by the activation formula "
                    "(only dropout 0, galore pretrain's setting)"
                )
            a = module.lora_A[adapter].weight
            chains.append([_op(a, a.dtype if cast else None), _op(module.lora_B[adapter].weight)])
        return chains
    if isinstance(module, nn.Linear):
        return [[_op(module.weight)]]
    raise ValueError(
        f"{name} is a {type(module).__name__}; the activation formula knows nn.Linear, peft LoRA "
        "layers and galorekit's LowRankLinear"
    )


@dataclass(frozen=True)
class _Layer:
    attn_norm_trainable: bool
    mlp_norm_trainable: bool
    proj: dict[str, list[list[_Op]]]


@dataclass(frozen=True)
class LlamaStructure:
    """What the activation formula reads from a model: its shapes, and per matmul the weight's
    dtype and trainability (see :func:`llama_structure`)."""

    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    layers: list[_Layer]
    embed_trainable: bool
    embed_output_rg: bool
    embed_dtype: torch.dtype
    final_norm_trainable: bool
    lm_head: list[list[_Op]]


_ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
_MLP = ("gate_proj", "up_proj", "down_proj")


def _find_backbone(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if all(hasattr(module, a) for a in ("embed_tokens", "layers", "norm")):
            return module
    raise ValueError(
        f"{type(model).__name__} is not a LLaMA-architecture model (no module with embed_tokens, "
        "layers and norm); the activation formula is written for LlamaForCausalLM"
    )


def _forces_input_grad(embedding: nn.Module) -> bool:
    """Whether ``PreTrainedModel.enable_input_require_grads`` hooked the embedding (peft and
    gradient checkpointing do): its output then requires grad even when its weight is frozen."""
    return any(
        getattr(hook, "__name__", "") == "make_inputs_require_grads"
        for hook in embedding._forward_hooks.values()
    )


def llama_structure(model: nn.Module) -> LlamaStructure:
    """Walk ``model`` once for :func:`estimate_activations`; reuse the result to evaluate many
    batch sizes or sequence lengths of one model (the fit search does)."""
    backbone = _find_backbone(model)
    config = backbone.config
    act = getattr(config, "hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"the activation formula assumes SiLU MLPs (LLaMA); this model uses {act}")
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError("the model has no output embeddings (lm_head)")
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    layers = []
    for i, layer in enumerate(backbone.layers):
        proj = {}
        for group, names in (("self_attn", _ATTN), ("mlp", _MLP)):
            parent = getattr(layer, group)
            for n in names:
                proj[n] = _chains(getattr(parent, n), f"layers.{i}.{group}.{n}")
        layers.append(
            _Layer(
                layer.input_layernorm.weight.requires_grad,
                layer.post_attention_layernorm.weight.requires_grad,
                proj,
            )
        )
    embed_module = backbone.embed_tokens
    embed = embed_module.weight
    return LlamaStructure(
        hidden=config.hidden_size,
        intermediate=config.intermediate_size,
        heads=heads,
        kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=head_dim,
        vocab=head.weight.shape[0],
        layers=layers,
        embed_trainable=embed.requires_grad,
        embed_output_rg=embed.requires_grad or _forces_input_grad(embed_module),
        embed_dtype=embed.dtype,
        final_norm_trainable=backbone.norm.weight.requires_grad,
        lm_head=_chains(head, "lm_head"),
    )


# ---- the forward pass, tensor by tensor ---------------------------------------------------------
@dataclass(frozen=True)
class _T:
    """A tensor of the forward pass: elements per token, dtype, requires_grad, and an identity
    so that a storage saved by several ops counts once."""

    ident: int
    width: int
    dtype: torch.dtype
    rg: bool


class _Forward:
    """Replays the forward's saves: ``save`` records a tensor once, in the current scope."""

    def __init__(self, setup: TrainingSetup, tokens: int) -> None:
        self.T = tokens
        self.autocast = setup.autocast_dtype
        self.terms: list[Term] = []
        self.saved: dict[int, str] = {}  # tensor identity -> scope it was saved in
        self.scope = ""
        self._next = 0

    def new(self, width: int, dtype: torch.dtype, rg: bool) -> _T:
        self._next += 1
        return _T(self._next, width, dtype, rg)

    def save(self, x: _T, name: str) -> None:
        if x.ident not in self.saved:
            self.saved[x.ident] = self.scope
            self.terms.append(Term(self.scope, name, self.T * x.width * _size(x.dtype)))

    def save_raw(self, name: str, nbytes: int) -> None:
        self.terms.append(Term(self.scope, name, int(nbytes)))

    def total(self, scope: str) -> int:
        return sum(t.nbytes for t in self.terms if t.scope == scope)

    def matmul(self, name: str, x: _T, op: _Op) -> _T:
        """``F.linear(x, W)``: saves its input when W trains, W's autocast copy when x needs a
        gradient; peft's and autocast's input casts make new tensors."""
        if op.cast_input_to is not None and op.cast_input_to != x.dtype:
            x = self.new(x.width, op.cast_input_to, x.rg)
        if self.autocast is not None and x.dtype != self.autocast:
            x = self.new(x.width, self.autocast, x.rg)
        if op.trainable:
            self.save(x, f"{name} input")
        if x.rg and self.autocast is not None and op.weight_dtype != self.autocast:
            nbytes = op.in_features * op.out_features * _size(self.autocast)
            self.save_raw(f"{name} weight copy", nbytes)
        return self.new(op.out_features, self.autocast or op.weight_dtype, x.rg or op.trainable)

    def projection(self, name: str, x: _T, chains: list[list[_Op]]) -> _T:
        """A projection (Linear, LoRA layer, Low-Rank factors): every chain reads ``x``; the
        result is their sum, in the first (base) chain's dtype."""
        outs = []
        for ci, chain in enumerate(chains):
            y = x
            for oi, op in enumerate(chain):
                y = self.matmul(name + _op_label(ci, oi, len(chain)), y, op)
            outs.append(y)
        return self.new(outs[0].width, outs[0].dtype, any(o.rg for o in outs))

    def rmsnorm(self, name: str, x: _T, weight_trainable: bool, weight_dtype: torch.dtype) -> _T:
        """LlamaRMSNorm: float32 ``x`` (a copy unless x is float32) and 1/rms if x needs a
        gradient; ``weight * normalised`` saves the normalised input if the weight trains."""
        if x.rg:
            self.save(x if x.dtype == _FP32 else self.new(x.width, _FP32, True), f"{name} input")
            self.save_raw(f"{name} 1/rms", self.T * 4)
        if weight_trainable:
            self.save(self.new(x.width, x.dtype, x.rg), f"{name} normalised")
        return self.new(
            x.width, torch.promote_types(weight_dtype, x.dtype), x.rg or weight_trainable
        )


def _op_label(chain: int, op: int, ops: int) -> str:
    """`` lora_A``/`` lora_B`` for adapter chains, `` A``/`` B`` for Low-Rank factors."""
    if ops == 1:
        return ""
    factor = "AB"[op] if op < 2 else str(op)
    return f" lora_{factor}" if chain > 0 else f" {factor}"


def _decoder_layer(
    fw: _Forward, arch: LlamaStructure, layer: _Layer, x: _T, setup: TrainingSetup
) -> tuple[_T, bool]:
    """Records one decoder layer's saved tensors; returns (its output, whether RoPE saved)."""
    b, s = setup.batch_size, setup.seq_len
    hd, kvd = arch.heads * arch.head_dim, arch.kv_heads * arch.head_dim
    y = fw.rmsnorm("attn_norm", x, layer.attn_norm_trainable, x.dtype)
    q = fw.projection("q_proj", y, layer.proj["q_proj"])
    k = fw.projection("k_proj", y, layer.proj["k_proj"])
    v = fw.projection("v_proj", y, layer.proj["v_proj"])
    rope = q.rg or k.rg  # q·cos saves cos (and sin) when q needs a gradient
    rg = q.rg or k.rg or v.rg
    # RoPE's output has the stream's dtype (cos/sin are in it); the kernels run in compute dtype
    compute = fw.autocast or v.dtype
    if setup.attn_implementation == "sdpa":
        out = fw.new(hd, compute, rg)
        if rg:
            fw.save(fw.new(hd, compute, True), "sdpa q")
            fw.save(fw.new(kvd, compute, True), "sdpa k")
            fw.save(v if v.dtype == compute else fw.new(kvd, compute, True), "sdpa v")
            fw.save(out, "sdpa output")  # also o_proj's input: same storage
            fw.save_raw("sdpa log-sum-exp", b * arch.heads * s * 4)
    else:
        out = fw.new(hd, compute, rg)  # the contiguous (b, s, h) copy fed to o_proj
        if rg:
            fw.save(fw.new(hd, compute, True), "eager q")
            fw.save(fw.new(hd, compute, True), "eager k (all heads)")
            full_v = kvd == hd and v.dtype == compute
            fw.save(v if full_v else fw.new(hd, compute, True), "eager v (all heads)")
            fw.save_raw("eager softmax (float32)", b * arch.heads * s * s * 4)
            if _size(compute) != 4:
                fw.save_raw("eager probabilities", b * arch.heads * s * s * _size(compute))
    o = fw.projection("o_proj", out, layer.proj["o_proj"])
    x = fw.new(arch.hidden, x.dtype, x.rg or o.rg)  # residual sum
    y = fw.rmsnorm("mlp_norm", x, layer.mlp_norm_trainable, x.dtype)
    g = fw.projection("gate_proj", y, layer.proj["gate_proj"])
    u = fw.projection("up_proj", y, layer.proj["up_proj"])
    if g.rg:
        fw.save(g, "SiLU input (gate out)")
    silu = fw.new(g.width, g.dtype, g.rg)
    if silu.rg:
        fw.save(u, "up out")
    if u.rg:
        fw.save(silu, "SiLU out")
    p = fw.new(g.width, g.dtype, g.rg or u.rg)
    d = fw.projection("down_proj", p, layer.proj["down_proj"])
    return fw.new(arch.hidden, x.dtype, x.rg or d.rg), rope


def estimate_activations(
    model: nn.Module | LlamaStructure, setup: TrainingSetup
) -> ActivationEstimate:
    """Peak saved-for-backward bytes of one micro-batch of ``setup`` on ``model`` (whose
    parameters may live on ``device="meta"``, or its :func:`llama_structure`); see the module
    docstring for the formula."""
    arch = model if isinstance(model, LlamaStructure) else llama_structure(model)
    s = setup.seq_len
    fw = _Forward(setup, setup.tokens)
    ckpt = setup.activation_checkpointing

    fw.scope = "head"
    if arch.embed_trainable:
        fw.save_raw("token ids (embedding)", fw.T * 8)
    # gradient_checkpointing_enable() makes the embedding output require grad even when frozen
    x = fw.new(arch.hidden, arch.embed_dtype, arch.embed_output_rg or ckpt)
    rope = False
    layer_bytes: list[int] = []
    inputs: list[int] = []
    own_input: list[int] = []
    for i, layer in enumerate(arch.layers):
        fw.scope = f"layer {i}"
        inputs.append(fw.T * x.width * _size(x.dtype))
        x_in = x
        x, needs_rope = _decoder_layer(fw, arch, layer, x_in, setup)
        rope = rope or needs_rope
        layer_bytes.append(fw.total(fw.scope))
        # under checkpointing, a saved layer input is the kept input itself (not extra memory)
        own_input.append(inputs[-1] if fw.saved.get(x_in.ident) == fw.scope else 0)
    fw.scope = "head"
    y = fw.rmsnorm("final_norm", x, arch.final_norm_trainable, x.dtype)
    logits = fw.projection("lm_head", y, arch.lm_head)
    if logits.rg:
        fw.save_raw("log-softmax (float32)", fw.T * arch.vocab * 4)
        fw.save_raw("shifted labels", fw.T * 8)
        fw.save_raw("loss total weight", 4)
    fw.scope = "shared"
    if rope:  # cos/sin take the dtype of the embedding output, batch 1 (default position ids)
        fw.save_raw("RoPE cos, sin", 2 * s * arch.head_dim * _size(arch.embed_dtype))
    head, shared = fw.total("head"), fw.total("shared")

    if not ckpt:
        total = shared + head + sum(layer_bytes)
        return ActivationEstimate(total, layer_bytes, head, shared, 0, fw.terms)
    # the embedding's token ids live until the very end of backward, the rest of the head's
    # tensors are freed before the first layer is recomputed
    ids = sum(t.nbytes for t in fw.terms if t.scope == "head" and t.name.startswith("token ids"))
    kept = sum(inputs)
    peak = kept + head  # end of the forward pass
    running = 0
    for i, lb in enumerate(layer_bytes):  # backward recomputes layer i with inputs 0..i kept
        running += inputs[i]
        peak = max(peak, ids + running + lb - own_input[i])
    return ActivationEstimate(shared + peak, layer_bytes, head, shared, kept, fw.terms)
