"""Keras 3 layers of a ViT, written with ``keras.ops`` only so they run on every backend.

One block serves every family; what the families differ in are switches: LayerScale (DINOv2,
DINOv3), a SwiGLU feed-forward (DINOv2-g, DINOv3 S+/H+), the feed-forward's activation (CLIP's
QuickGELU, SigLIP's tanh GELU), rotary position on the patches' queries and keys (DINOv3), a
masked key bias (DINOv3), a patch projection without bias (CLIP) and SigLIP's attention-pooling
head (``AttentionPool``). Weight layouts follow Keras (Dense kernels are
``(in, out)``); ``vit.py`` maps torch-style checkpoints onto them.
"""

from __future__ import annotations

import numpy as np

from vidattn.backend import keras, ops

# Attention in one piece through keras.ops.dot_product_attention where the backend has a fused
# kernel for it (JAX: cuDNN's flash attention on GPUs; torch: scaled_dot_product_attention). On
# TensorFlow Keras composes it from plain ops that XLA runs about 20 % slower than the product
# written out (attention_probs, then the weighted sum): measured in 12 compiled ViT-S attention
# layers at N=8, T=351 on this machine's CPU, 310 ms against 260 ms.
FUSED_ATTENTION = keras.backend.backend() != "tensorflow"

__all__ = ["ACTIVATIONS", "LRP_RULES", "MLP", "Attention", "AttentionPool", "Block", "LayerScale",
           "PatchEmbed", "Record",
           "SwiGLU", "apply_rope", "attention_probs", "chunked_attention", "identity_rule",
           "lrp_norm", "query_chunks", "rule_norm", "scale_gradient"]

# Forwards whose gradient x input is an LRP (vidattn.relevance.lrp): "attnlrp" (Achtibat et al.
# ICML 2024, lxt.efficient's rules) and "cp-lrp" (its ViT example: attention held constant).
LRP_RULES = ("attnlrp", "cp-lrp")
IDENTITY_EPS = 1e-10  # lxt's identity_rule_implicit epsilon


def _quick_gelu(x):
    """OpenAI CLIP's ``QuickGELU``: ``x * sigmoid(1.702 x)``."""
    return x * ops.sigmoid(1.702 * x)


# The "gelu" feed-forward's activation (Preset.act): exact erf GELU (timm, DINO, OpenCLIP), the
# tanh approximation (SigLIP's gelu_pytorch_tanh: torch's approximate="tanh") and QuickGELU.
ACTIVATIONS = {
    "gelu": lambda x: keras.activations.gelu(x, approximate=False),
    "gelu_tanh": lambda x: keras.activations.gelu(x, approximate=True),
    "quick_gelu": _quick_gelu,
}


class Record:
    """Where a layer's ``record=`` leaves its intermediates, in ``values`` (name -> tensor): an
    object, because Keras copies the dicts and lists a layer is called with."""

    def __init__(self):
        self.values = {}


def scale_gradient(x, factor):
    """``x`` unchanged on the way forward, its gradient multiplied by ``factor`` on the way
    back (lxt's ``divide_gradient`` by ``1 / factor``: AttnLRP's uniform rule for a product of
    two inputs, each of which gets half the relevance)."""
    return ops.stop_gradient(x - x * factor) + x * factor


def identity_rule(fn, x):
    """``fn(x)`` forward for an element-wise ``fn``, whose gradient is ``fn(x) / (x + eps)``
    (lxt's ``identity_rule_implicit``: AttnLRP's identity rule, relevance passes unchanged)."""
    y = fn(x)
    ratio = ops.stop_gradient(y / (x + IDENTITY_EPS))
    return ops.stop_gradient(y - x * ratio) + x * ratio


def rule_norm(norm, x, rules=None):
    """``norm(x)``, or with LRP ``rules`` (``LRP_RULES``) ``lrp_norm``: the same value, the
    deviation constant for the gradient. Every LayerNorm of an LRP forward goes through here."""
    return norm(x) if rules is None else lrp_norm(norm, x)


def lrp_norm(norm, x):
    """``keras.layers.LayerNormalization`` ``norm`` on ``x`` ``(..., D)`` with its standard
    deviation a constant for the gradient (lxt's ``layer_norm_forward``: the identity rule on
    normalisation); what remains is linear in ``x``."""
    mean = ops.mean(x, axis=-1, keepdims=True)
    centred = x - mean
    std = ops.sqrt(ops.mean(ops.square(centred), axis=-1, keepdims=True) + norm.epsilon)
    return centred / ops.stop_gradient(std) * ops.cast(norm.gamma, x.dtype) + ops.cast(
        norm.beta, x.dtype)


class PatchEmbed(keras.layers.Layer):
    """Cut an image into ``p x p`` patches ``stride`` pixels apart and project each to ``dim``.

    Without a stride (``stride`` = p) the patches do not overlap, and the convolution
    ``Conv2D(dim, p, strides=p)`` is written as what it is, reshape + matmul; a smaller stride
    (``presets.with_stride``: overlapping patches) runs the same kernel as a strided
    convolution. The kernel is ``(p * p * 3, dim)`` over patches flattened as (row, column,
    channel), the layout of a ``(p, p, 3, dim)`` convolution kernel.

    Input ``(N, H, W, 3)`` with H and W multiples of p; output ``(N, gh * gw, dim)``, patches
    row by row, ``gh = 1 + (H - p) // stride`` (``H / p`` without overlap), ``gw`` alike.
    ``bias=False``: a projection without bias (CLIP's ``conv1``).
    """

    def __init__(self, patch_size, dim, stride=None, bias=True, **kwargs):
        super().__init__(**kwargs)
        self.patch_size, self.stride = patch_size, stride or patch_size
        self.proj = keras.layers.Dense(dim, use_bias=bias, name="proj")

    def build(self, input_shape):
        self.proj.build((None, self.patch_size * self.patch_size * input_shape[-1]))

    def call(self, images):
        p = self.patch_size
        n, h, w, c = ops.shape(images)
        if self.stride != p:
            kernel = ops.cast(ops.reshape(self.proj.kernel, (p, p, c, -1)), self.compute_dtype)
            x = ops.conv(ops.cast(images, self.compute_dtype), kernel, strides=self.stride)
            x = ops.reshape(x, (n, -1, x.shape[-1]))
            return x if self.proj.bias is None else x + ops.cast(self.proj.bias, x.dtype)
        x = ops.reshape(images, (n, h // p, p, w // p, p, c))
        x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
        x = ops.reshape(x, (n, (h // p) * (w // p), p * p * c))
        return self.proj(x)


def apply_rope(x, sin, cos):
    """Rotate ``x`` ``(N, T, ..., head_dim)`` by RoPE angles ``sin``, ``cos`` ``(T,
    head_dim)`` (``position.rope_sin_cos``; the class and storage tokens' rows are the identity).
    The rotate-half form of DINOv3: ``x cos + [-x2, x1] sin`` with ``x1, x2`` the two halves of
    the head dimension. Computed in float32, returned in ``x``'s type."""
    x32 = ops.cast(x, "float32")
    half = x32.shape[-1] // 2
    rotated = ops.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    between = (1,) * (len(x.shape) - 3)  # the axes between tokens and head_dim
    sin = ops.reshape(sin, (sin.shape[0], *between, sin.shape[1]))
    cos = ops.reshape(cos, (cos.shape[0], *between, cos.shape[1]))
    return ops.cast(x32 * cos + rotated * sin, x.dtype)


def attention_probs(q, k, scale):
    """Softmax attention of queries ``q`` ``(N, Tq, heads, d)`` over keys ``k`` ``(N, T, heads,
    d)``: ``(N, heads, Tq, T)``, each row ``softmax(q . k * scale)``. The product runs in the
    inputs' type; a reduced precision's scores are softmaxed in float32."""
    scores = ops.einsum("nqhd,nkhd->nhqk", q * ops.cast(scale, q.dtype), k)
    if keras.backend.standardize_dtype(scores.dtype) in ("float16", "bfloat16"):
        scores = ops.cast(scores, "float32")
    return ops.softmax(scores, axis=-1)


def query_chunks(x, chunk):
    """``x`` ``(N, T, ...)`` padded with zeros to whole chunks of ``chunk`` queries and split:
    ``(T_pad // chunk, N, chunk, ...)``, chunks first (to map over)."""
    t = x.shape[1]
    pad = -t % chunk
    if pad:
        x = ops.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (len(x.shape) - 2))
    x = ops.reshape(x, (x.shape[0], (t + pad) // chunk, chunk, *x.shape[2:]))
    return ops.moveaxis(x, 1, 0)


def chunked_attention(q, k, v, scale, chunk):
    """Exact attention output ``(N, T, heads, d)`` with the queries tiled in chunks of ``chunk``:
    each chunk's rows are the same softmax as in one piece, but only ``heads * chunk * T`` scores
    exist at a time (per image) instead of ``heads * T * T``. Any chunk size; a last, shorter
    chunk is padded and its padding dropped."""
    t = q.shape[1]

    def one_chunk(q_chunk):
        probs = ops.cast(attention_probs(q_chunk, k, scale), v.dtype)
        return ops.einsum("nhqk,nkhd->nqhd", probs, v)

    out = ops.map(one_chunk, query_chunks(q, chunk))  # (chunks, N, chunk, heads, d)
    out = ops.moveaxis(out, 0, 1)
    return ops.reshape(out, (out.shape[0], -1, *out.shape[3:]))[:, :t]


class Attention(keras.layers.Layer):
    """Multi-head self-attention with a fused qkv projection (q, k, v blocks, heads contiguous).

    ``mask_k_bias``: the qkv bias is multiplied by a stored ``bias_mask`` ``(3 dim,)`` (DINOv3's
    ``LinearKMaskedBias``, whose mask zeroes the key bias), as the official code does each call.

    ``call(x, rope=None, probs=None, chunk=None)`` with x ``(N, T, D)`` returns
    ``(out (N, T, D), probabilities)``:

    - ``probs``: None (no probabilities), ``"all"``: ``(N, heads, T, T)``, or an int ``R``: the
      rows of the first ``R`` queries, ``(N, heads, R, T)`` (the class tokens' rows);
    - ``chunk``: None for attention in one piece (``keras.ops.dot_product_attention`` where the
      backend fuses it, ``FUSED_ATTENTION``: flash attention on GPUs; else the product written
      out), or a query chunk size (``chunked_attention``) that bounds the scores held at once;
      all exact.
    - ``rope``: ``(sin, cos)`` ``(T, head_dim)`` to rotate the queries and keys by
      (``apply_rope``; identity rows for the tokens DINOv3 leaves unrotated).
    - ``offset``: ``(N, heads, T, T)`` zeros added to the probabilities before they weight the
      values, so that the gradient of an output with respect to ``offset`` is its gradient with
      respect to the attention (``vidattn.relevance``); implies ``probs="all"``.
    - ``rules``: an LRP forward (``LRP_RULES``): ``"attnlrp"`` scales the gradients of the
      queries and keys by 1/4 and of the values by 1/2 (lxt's attention wrapper: the uniform
      rule on both products), ``"cp-lrp"`` stops the queries' and keys' (the attention is a
      constant); the values it computes are unchanged.
    - ``record``: a ``Record`` that receives ``q``, ``k``, ``v`` ``(N, T, heads, head_dim)``,
      ``attn`` ``(N, heads, T, T)`` and ``o`` ``(N, T, D)``, the output before ``proj`` (the
      explicit LRP of ``vidattn.relevance.lrp``); implies ``probs="all"``.
    """

    def __init__(self, dim, num_heads, mask_k_bias=False, **kwargs):
        super().__init__(autocast=False, **kwargs)  # RoPE's angles stay float32
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = keras.layers.Dense(3 * dim, name="qkv")
        self.proj = keras.layers.Dense(dim, name="proj")
        self.bias_mask = None
        if mask_k_bias:
            mask = np.ones(3 * dim, np.float32)
            mask[dim : 2 * dim] = 0
            self.bias_mask = self.add_weight(
                shape=(3 * dim,), initializer=keras.initializers.Constant(mask),
                trainable=False, name="bias_mask")

    def build(self, input_shape):
        self.qkv.build(input_shape)
        self.proj.build(input_shape)

    def heads(self, x, rope=None):
        """Queries, keys and values of ``x`` ``(N, T, D)``, each ``(N, T, heads, head_dim)``,
        the queries' and keys' patch tokens rotated by ``rope``."""
        n, t, _ = ops.shape(x)
        if self.bias_mask is None:
            qkv = self.qkv(x)
        else:
            qkv = ops.matmul(x, self.qkv.kernel) + self.qkv.bias * self.bias_mask
        qkv = ops.reshape(qkv, (n, t, 3, self.num_heads, self.head_dim))
        qk = qkv[:, :, :2]
        if rope is not None:  # queries and keys rotated together: one pass over both
            qk = apply_rope(qk, *rope)
        return qk[:, :, 0], qk[:, :, 1], qkv[:, :, 2]

    def projection(self, x, part):
        """One part of the fused ``qkv`` projection of ``x`` ``(N, T, D)``: the queries (0), keys
        (1) or values (2), ``(N, T, heads, head_dim)``, unrotated (the masked bias included)."""
        d = self.num_heads * self.head_dim
        bias = self.qkv.bias if self.bias_mask is None else self.qkv.bias * self.bias_mask
        kernel = ops.cast(self.qkv.kernel[:, part * d : (part + 1) * d], x.dtype)
        y = ops.matmul(x, kernel) + ops.cast(bias[part * d : (part + 1) * d], x.dtype)
        return ops.reshape(y, (ops.shape(x)[0], -1, self.num_heads, self.head_dim))

    def probabilities(self, x, rope=None, rows=None):
        """The attention probabilities of ``x`` ``(N, T, D)`` and nothing else: ``(N, heads, R,
        T)`` for the first ``rows`` queries (None: all ``T``). No values and no output, and
        queries for those rows only: what a caller that reads only a block's attention needs
        (``Block.attention_only``). ``call``'s probabilities, up to float rounding."""
        q = self.projection(x if rows is None else x[:, :rows], 0)
        k = self.projection(x, 1)
        if rope is not None:
            sin, cos = rope
            q, k = apply_rope(q, sin[: q.shape[1]], cos[: q.shape[1]]), apply_rope(k, sin, cos)
        return attention_probs(q, k, self.scale)

    def call(self, x, rope=None, probs=None, chunk=None, offset=None, rules=None, record=None):
        n, t, d = ops.shape(x)
        q, k, v = self.heads(x, rope)
        if rules == "attnlrp":
            q, k, v = scale_gradient(q, 0.25), scale_gradient(k, 0.25), scale_gradient(v, 0.5)
        elif rules == "cp-lrp":
            q, k = ops.stop_gradient(q), ops.stop_gradient(k)
        whole = None  # every query's probabilities, where this path computes them anyway
        if offset is not None or record is not None:
            probs = "all"
        if probs == "all" or (chunk is None and not FUSED_ATTENTION):
            whole = attention_probs(q, k, self.scale)
            weights = whole if offset is None else whole + ops.cast(offset, whole.dtype)
            out = ops.einsum("nhqk,nkhd->nqhd", ops.cast(weights, v.dtype), v)
        elif chunk is None:
            out = ops.dot_product_attention(q, k, v, scale=self.scale)
        else:
            out = chunked_attention(q, k, v, self.scale, chunk)
        if probs is None:
            probabilities = None
        elif probs == "all":
            probabilities = whole
        elif whole is not None:
            probabilities = whole[:, :, :probs]
        else:
            probabilities = attention_probs(q[:, :probs], k, self.scale)
        out = ops.reshape(out, (n, t, d))
        if record is not None:
            record.values.update(q=q, k=k, v=v, attn=whole, o=out)
        return self.proj(out), probabilities


class MLP(keras.layers.Layer):
    """Two Dense layers with an activation between: ``fc2(act(fc1(x)))``, ``act`` a name in
    ``ACTIVATIONS`` (exact erf GELU as in timm and DINO; CLIP's QuickGELU; SigLIP's tanh GELU).

    ``call(x, rules=None, record=None)``: with ``rules`` (``LRP_RULES``) the activation passes its
    relevance on unchanged (``identity_rule``: AttnLRP's rule for any element-wise
    non-linearity); ``record`` (``Record``) receives ``g``, the activation's output
    ``(N, T, hidden)``."""

    def __init__(self, dim, hidden, act="gelu", **kwargs):
        super().__init__(**kwargs)
        self.act = ACTIVATIONS[act]
        self.fc1 = keras.layers.Dense(hidden, name="fc1")
        self.fc2 = keras.layers.Dense(dim, name="fc2")

    def build(self, input_shape):
        self.fc1.build(input_shape)
        self.fc2.build(tuple(input_shape[:-1]) + (self.fc1.units,))

    def call(self, x, rules=None, record=None):
        h = self.fc1(x)
        g = self.act(h) if rules is None else identity_rule(self.act, h)
        if record is not None:
            record.values["g"] = g
        return self.fc2(g)


class SwiGLU(keras.layers.Layer):
    """Gated feed-forward of DINOv2-g and DINOv3 S+/H+: ``w3(silu(a) * b)`` where ``[a, b] =
    w12(x)``, the gate ``a`` being the first ``hidden`` outputs (DINOv2's fused ``w12``; DINOv3's
    separate ``w1``, ``w2`` are its two halves)."""

    def __init__(self, dim, hidden, **kwargs):
        super().__init__(**kwargs)
        self.hidden = hidden
        self.w12 = keras.layers.Dense(2 * hidden, name="w12")
        self.w3 = keras.layers.Dense(dim, name="w3")

    def build(self, input_shape):
        self.w12.build(input_shape)
        self.w3.build(tuple(input_shape[:-1]) + (self.hidden,))

    def call(self, x):
        x = self.w12(x)
        gate, up = x[..., : self.hidden], x[..., self.hidden :]
        return self.w3(keras.activations.silu(gate) * up)


class LayerScale(keras.layers.Layer):
    """Per-channel scale of a residual branch: ``x * gamma`` (CaiT, DINOv2, DINOv3)."""

    def __init__(self, dim, **kwargs):
        super().__init__(**kwargs)
        self.gamma = self.add_weight(shape=(dim,), initializer="ones", name="gamma")

    def call(self, x):
        return x * self.gamma


class Block(keras.layers.Layer):
    """Pre-norm transformer block: ``x + ls1(attn(norm1(x)))``, then ``x + ls2(mlp(norm2(x)))``;
    without ``layer_scale`` the ``ls`` are identities. ``mlp``: ``"gelu"`` (its activation
    ``act``, a name in ``ACTIVATIONS``) or ``"swiglu"``.

    ``call(..., offset=None, tap=None, rules=None, record=None)``: ``offset`` goes to the
    attention (``Attention``); ``tap`` ``(N, T, D)`` zeros are added to ``norm1(x)``, whose value
    the call then also returns, for the gradient with respect to the tokens attention reads
    (Grad-CAM's layer). ``rules`` (``LRP_RULES``; plain GELU blocks only) holds both norms'
    deviations constant (``lrp_norm``) and goes to the attention and the MLP. ``record``
    (``Record``) receives, besides theirs (``Attention``, ``MLP``), ``x`` the input, ``h1``
    ``norm1(x)``, ``y1`` the attention branch, ``mid`` ``x + y1``, ``h2`` ``norm2(mid)`` and
    ``y2`` the MLP branch, all ``(N, T, D)``."""

    def __init__(self, dim, num_heads, hidden, eps, mlp="gelu", layer_scale=False,
                 mask_k_bias=False, act="gelu", **kwargs):
        super().__init__(autocast=False, **kwargs)  # RoPE's angles pass through as float32
        self.norm1 = keras.layers.LayerNormalization(epsilon=eps, name="norm1")
        self.attn = Attention(dim, num_heads, mask_k_bias, name="attn")
        self.norm2 = keras.layers.LayerNormalization(epsilon=eps, name="norm2")
        self.mlp = (SwiGLU(dim, hidden, name="mlp") if mlp == "swiglu"
                    else MLP(dim, hidden, act, name="mlp"))
        self.ls1 = LayerScale(dim, name="ls1") if layer_scale else None
        self.ls2 = LayerScale(dim, name="ls2") if layer_scale else None

    def build(self, input_shape):
        for layer in (self.norm1, self.attn, self.norm2, self.mlp):
            layer.build(input_shape)

    def attention_only(self, x, rope=None, rows=None):
        """This block's attention probabilities on ``x`` and nothing after them
        (``Attention.probabilities`` of ``norm1(x)``; ``rows``: the first queries only): the last
        block of a forward whose caller reads only its attention (``ViT``, ``features=False``),
        where the attention's output, the feed-forward and the final norm would be dead work."""
        return self.attn.probabilities(self.norm1(x), rope, rows)

    def call(self, x, rope=None, probs=None, chunk=None, offset=None, tap=None, rules=None,
             record=None):
        lrp = {} if rules is None and record is None else {"rules": rules, "record": record}
        h = rule_norm(self.norm1, x, rules)
        if tap is not None:
            h = h + ops.cast(tap, h.dtype)
        y, probs = self.attn(h, rope=rope, probs=probs, chunk=chunk, offset=offset, **lrp)
        mid = x + (y if self.ls1 is None else self.ls1(y))
        h2 = rule_norm(self.norm2, mid, rules)
        y2 = self.mlp(h2, **lrp)
        out = mid + (y2 if self.ls2 is None else self.ls2(y2))
        if record is not None:
            record.values.update(x=x, h1=h, y1=y, mid=mid, h2=h2, y2=y2)
        return (out, probs) if tap is None else (out, probs, h)


class AttentionPool(keras.layers.Layer):
    """Multi-head attention pooling (SigLIP's "MAP" head: Hugging Face's
    ``SiglipMultiheadAttentionPoolingHead``, timm's ``AttentionPoolLatent`` with one latent): a
    learned probe ``latent`` ``(1, 1, D)`` attends over the tokens, then a residual feed-forward::

        o = proj(softmax(q(latent) . k / sqrt(head_dim)) v),   [k, v] = kv(x)
        pooled = o + mlp(norm(o))

    The keys and values are the two halves of ``kv`` (keys first, heads contiguous, as timm
    stores them; Hugging Face's fused ``in_proj`` rows q, k, v split the same way:
    ``families.siglip``); ``mlp`` is an ``MLP`` of the model's width and activation and ``norm``
    a LayerNorm of the model's epsilon, as both references build them.

    ``call(x)`` with ``x`` ``(N, T, D)`` returns ``(pooled (N, D), probabilities (N, heads, 1,
    T))``: the probe's attention over the tokens, what a map of the model reads in place of the
    class rows."""

    def __init__(self, dim, num_heads, hidden, eps, act="gelu", seed=None, **kwargs):
        super().__init__(**kwargs)
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim**-0.5
        init = keras.initializers.TruncatedNormal(stddev=0.02, seed=seed)
        self.latent = self.add_weight(shape=(1, 1, dim), initializer=init, name="latent")
        self.q = keras.layers.Dense(dim, name="q")
        self.kv = keras.layers.Dense(2 * dim, name="kv")
        self.proj = keras.layers.Dense(dim, name="proj")
        self.norm = keras.layers.LayerNormalization(epsilon=eps, name="norm")
        self.mlp = MLP(dim, hidden, act, name="mlp")

    def build(self, input_shape):
        for layer in (self.q, self.kv, self.proj, self.norm, self.mlp):
            layer.build((None, None, input_shape[-1]))

    def call(self, x):
        n, t, d = ops.shape(x)
        probe = ops.zeros_like(x[:, :1]) + ops.cast(self.latent, x.dtype)  # (N, 1, D)
        q = ops.reshape(self.q(probe), (n, 1, self.num_heads, self.head_dim))
        kv = ops.reshape(self.kv(x), (n, t, 2, self.num_heads, self.head_dim))
        probs = attention_probs(q, kv[:, :, 0], self.scale)  # (N, heads, 1, T)
        v = kv[:, :, 1]
        o = ops.einsum("nhqk,nkhd->nqhd", ops.cast(probs, v.dtype), v)
        o = self.proj(ops.reshape(o, (n, 1, d)))
        return (o + self.mlp(self.norm(o)))[:, 0], probs
