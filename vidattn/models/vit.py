"""The ViT backbone: one model for DINO, the supervised ViT, DeiT (with or without distillation
token), DINOv2 (with or without registers), DINOv3 and the image towers of CLIP, OpenCLIP and
SigLIP (2), configured by a :class:`~vidattn.models.presets.Preset`.

``ViT(images, attention=..., rollout=..., tokens=...)`` returns the final CLS features, the
logits where the preset has a head, exactly the attention probabilities the caller asked for (a
run that needs only the last block never holds every block's ``T x T`` matrices), on request the
CLS row of attention rollout computed in the graph (:func:`cls_rollout`), so the rollout view
never copies ``depth * heads * T**2`` floats out of the model, the final patch tokens, and one
block's patch features of one facet (``FACETS``: for patch similarity).

Tokens are ``[class tokens, registers, patches row by row]``. Learned position embeddings cover
the class tokens and the patches (registers have none: DINOv2 adds positions first and then
inserts the registers) and are resampled to the input's grid as the family's own code does
(``position.resize_matrix``); DINOv3 instead rotates the patches' queries and keys (RoPE).
CLIP normalises the tokens once more before the first block (``pre_norm``); SigLIP has no class
token and pools the final-normed tokens by a learned probe's attention (``pool="map"``,
``layers.AttentionPool``), whose attention stands in for the class rows in every map.

:meth:`ViT.checkpoint_layout` names every weight as the official checkpoints do, with their torch
shapes; :func:`load_state_dict` assigns a canonical state dict (``vidattn.models.state_dict``)
and :func:`export_state_dict` is its inverse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from vidattn.backend import keras, ops
from vidattn.errors import VidattnError
from vidattn.models.layers import (AttentionPool, Block, PatchEmbed, Record, attention_probs,
                                   query_chunks, rule_norm)
from vidattn.models.position import resize_matrix, rope_periods, rope_sin_cos
from vidattn.models.presets import Preset
from vidattn.options import FACETS

__all__ = ["ATTENTION_MODES", "FACETS", "Slot", "ViT", "check_attention", "cls_rollout",
           "export_state_dict", "load_state_dict", "randomize", "rollout_step"]

ATTENTION_MODES = ("none", "cls", "cls_all", "last", "all")


def check_attention(preset: Preset, attention: str) -> None:
    """Refuse an ``attention`` mode ``preset``'s model cannot return, before any work: one not
    in ``ATTENTION_MODES`` (ValueError), or ``"cls_all"`` for a model that pools by a probe
    (VidattnError: no block has class rows)."""
    if attention not in ATTENTION_MODES:
        raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {attention!r}")
    if attention == "cls_all" and preset.pool == "map":
        raise VidattnError(f"{preset.name} has no class token (a probe pools after the last "
                           "block), so no block has CLS rows to map one by one: only the "
                           "probe's attention (--viewer-blocks last; attention 'cls')")


def cls_rollout(mean_attns, start=None):
    """CLS row of attention rollout (Abnar & Zuidema) with the study's semantics.

    ``mean_attns``: one ``(N, T, T)`` tensor per block, first block first, each the block's
    attention averaged over heads. Returns ``(N, T)``: row 0 of ``J = R_L @ ... @ R_1``, where
    ``R_b`` is ``mean_attns[b] + I`` with rows renormalised to sum to 1 (the residual path).
    Every token takes part (registers too); the maps keep the patches' columns.

    ``start``: ``(N, T)``, the row to roll back instead of ``e_0``: for a model without a class
    token that pools by a probe (SigLIP), the probe's head-mean attention over the final tokens,
    so the result is ``start @ J``, what the probe reads from each input token.

    Only that row is needed, and ``e_0 @ R_L @ ... @ R_1`` is a row vector times matrices taken
    LAST block first: ``r <- r @ R_b`` for b = L..1, which costs O(L * N * T**2), not the full
    product's O(L * N * T**3). ``R_b`` is never formed either: with ``d`` its row sums (row sums
    of the mean attention, plus 1), ``r @ R_b = (r / d) @ A_b + r / d``.

    Written with ``keras.ops``: the model runs it inside its compiled graph, and it accepts numpy
    arrays too (float64 in, float64 out).
    """
    last = ops.convert_to_tensor(mean_attns[-1])
    if start is None:
        row = ops.cast(ops.arange(last.shape[-1]) == 0, last.dtype)
        row = ops.zeros_like(last[:, :1, :]) + row  # (N, 1, T): e_0 for each image
    else:
        row = ops.expand_dims(ops.cast(start, last.dtype), 1)
    for attn in reversed(mean_attns):
        scaled = row / (ops.expand_dims(ops.sum(attn, axis=-1), 1) + 1)
        row = ops.matmul(scaled, attn) + scaled
    return row[:, 0]


def rollout_step(row, q, k, scale, chunk):
    """One block of :func:`cls_rollout` without the block's ``T x T`` attention: ``row``
    ``(N, T)`` -> ``row @ R``, ``R`` the head-mean attention of queries ``q`` over keys ``k``
    (``(N, T, heads, d)``) plus the identity, rows renormalised. The attention is recomputed in
    chunks of ``chunk`` query rows, so only ``heads * chunk * T`` scores exist at a time:
    ``row @ R = sum over query rows i of (row_i / d_i) (A_i + e_i)``, ``d_i`` row i's sum."""
    t = row.shape[1]

    def one_chunk(rows_and_queries):
        part, queries = rows_and_queries  # (N, chunk), (N, chunk, heads, d)
        mean = ops.mean(attention_probs(queries, k, scale), axis=1)  # (N, chunk, T)
        scaled = part / (ops.sum(mean, axis=-1) + 1)
        return ops.einsum("nc,nct->nt", scaled, mean), scaled

    spread, scaled = ops.map(one_chunk, (query_chunks(row, chunk), query_chunks(q, chunk)))
    scaled = ops.reshape(ops.moveaxis(scaled, 0, 1), (row.shape[0], -1))[:, :t]
    return ops.sum(spread, axis=0) + scaled


def _identity(x):
    return x


@dataclass(frozen=True)
class Slot:
    """Where one checkpoint tensor goes: the Keras ``variable``, the tensor's torch-layout
    ``shape``, and the maps between the two layouts (``to_keras``, ``from_keras``)."""

    variable: object
    shape: tuple
    to_keras: Callable = _identity
    from_keras: Callable = _identity


class ViT(keras.Model):
    """Vision Transformer backbone (timm's ``VisionTransformer`` without dropout, with the
    switches of DINOv2 and DINOv3).

    Call with images ``(N, H, W, 3)``, float32, already preprocessed, H and W multiples of the
    patch size (any aspect ratio). Returns a dict:

    - ``features``: ``(N, D)``, the final-normed CLS token (CLIP: Hugging Face's
      ``pooler_output``, ``post_layernorm`` of the CLS token, before the visual projection, which
      is not part of the model); with ``pool="map"`` (SigLIP) the attention-pooling head's output
      (Hugging Face's ``pooler_output``);
    - ``logits``: ``(N, num_classes)`` where the preset has a head (distilled DeiT averages the
      CLS and distillation heads, as timm does at inference);
    - ``attention``: list of softmax probabilities, one per returned block (``attention="last"``:
      ``(N, heads, T, T)`` of the last block; ``"all"``: every block; ``"cls"``: the class
      tokens' rows of the last block, ``(N, heads, num_class_tokens, T)``, all that a map of
      CLS attention needs; ``"cls_all"``: those rows of every block; ``"none"``: empty), where
      ``T = num_prefix_tokens + gh * gw`` on the patch grid ``preset.grid_at((H, W))``
      (``(H/p, W/p)``, finer with a stride),
      prefix tokens first, patches row by row;
    - with ``pool="map"`` (no class token: SigLIP), ``"cls"`` returns ``[probe attention (N,
      heads, 1, T)]`` in place of the class rows, so whatever reads "the class rows of the last
      block" reads the probe; ``"last"`` and ``"all"`` return the blocks' ``(N, heads, T, T)``
      as for any model; ``"cls_all"`` raises VidattnError (no block has class rows); and
      whenever attention is asked for, or rollout, ``pool_attention``: ``(N, heads, 1, T)``, the
      probe's attention (``vidattn.attention.class_rows`` picks what a CLS map reads);
    - ``rollout``: ``(N, T)``, the CLS row of attention rollout through every block
      (:func:`cls_rollout`), only with ``rollout=True``; with ``pool="map"`` it starts from the
      probe's head-mean attention instead of ``e_0``;
    - ``patch_tokens``: ``(N, gh * gw, D)``, the final-normed patch tokens (DINOv2's
      ``x_norm_patchtokens``; CLIP's normed by ``post_layernorm`` as OpenCLIP's ``ln_post``
      norms every token, where Hugging Face's ``last_hidden_state`` is not normed; SigLIP's
      are its ``last_hidden_state``), and ``patch_norms``: ``(N, gh * gw)``, the L2 norms of the
      patch tokens before the final norm (the residual stream, DINOv2's ``x_prenorm``, where the
      high-norm artifact tokens of "Vision Transformers Need Registers" show), only with
      ``tokens=True``.

    ``chunk``: None, or a query chunk size: every block's attention is then computed in chunks
    of queries (``layers.chunked_attention``) and rollout recomputes each block's attention in
    chunks walking the blocks last first (:func:`rollout_step`, from each block's input kept on
    the way: ``O(depth * T * D)`` memory instead of ``O(depth * T**2)``). Exact either way;
    ``vidattn.models.memory`` chooses it.

    ``features=False``: the caller reads only the attention, rollout or facet it asked for
    (the video views): then, unless ``tokens`` or a probe needs it, no ``features`` or
    ``logits`` are returned and the last block computes only the attention asked of it
    (``Block.attention_only``: its queries of the class rows and its keys), not its output,
    feed-forward or the final norm.
    """

    def __init__(self, preset: Preset, seed: int | None = None, **kwargs):
        super().__init__(name=preset.name, **kwargs)
        self.preset = p = preset
        d = p.embed_dim
        self.patch_embed = PatchEmbed(p.patch_size, d, p.stride, bias=p.patch_bias,
                                      name="patch_embed")
        self.norm_pre = (keras.layers.LayerNormalization(epsilon=p.layer_norm_eps, name="norm_pre")
                         if p.pre_norm else None)
        self.blocks = [
            Block(d, p.num_heads, p.hidden, p.layer_norm_eps, mlp=p.mlp,
                  layer_scale=p.layer_scale, mask_k_bias=p.mask_k_bias, act=p.act,
                  name=f"blocks_{i}")
            for i in range(p.depth)
        ]
        self.norm = keras.layers.LayerNormalization(epsilon=p.layer_norm_eps, name="norm")
        self.attn_pool = (AttentionPool(d, p.num_heads, p.hidden, p.layer_norm_eps, p.act,
                                        seed=seed, name="attn_pool")
                          if p.pool == "map" else None)
        init = keras.initializers.TruncatedNormal(stddev=0.02, seed=seed)
        self.class_tokens = [
            self.add_weight(shape=(1, 1, d), initializer=init, name=name)
            for name in ("cls_token", "dist_token")[: p.num_class_tokens]
        ]
        self.register_tokens = None
        if p.num_register_tokens:
            self.register_tokens = self.add_weight(
                shape=(1, p.num_register_tokens, d), initializer=init, name="register_tokens")
        self.pos_embed = self.periods = None
        if p.position == "learned":
            self.pos_embed = self.add_weight(
                shape=(1, p.num_class_tokens + p.grid_size**2, d), initializer=init,
                name="pos_embed")
        else:
            self.periods = self.add_weight(  # float32 at any precision, as DINOv3's rope dtype
                shape=(p.head_dim // 4,), trainable=False, name="periods", autocast=False,
                initializer=keras.initializers.Constant(rope_periods(p.head_dim, p.rope_base)))
        self.heads = [
            keras.layers.Dense(p.num_classes, name=name)
            for name in ("head", "head_dist")[: p.num_class_tokens if p.num_classes else 0]
        ]
        self.build((None, p.patch_size, p.patch_size, 3))

    def build(self, input_shape):
        d = self.preset.embed_dim
        self.patch_embed.build(input_shape)
        for layer in (*self.blocks, self.norm, self.norm_pre, self.attn_pool):
            if layer is not None:
                layer.build((None, None, d))
        for head in self.heads:
            head.build((None, d))
        self.built = True

    def position_embeddings(self, grid_hw):
        """``(1, n_cls + gh * gw, D)`` learned position embeddings for a ``(gh, gw)`` patch grid:
        the class tokens' rows as trained, the patch rows resampled by the preset's
        ``pos_resize`` (none on the native grid, as every family skips it there)."""
        n_cls, g = self.preset.num_class_tokens, self.preset.grid_size
        if tuple(grid_hw) == (g, g):
            return self.pos_embed
        (gh, gw), mode = grid_hw, self.preset.pos_resize
        patch_pos = ops.reshape(ops.cast(self.pos_embed[:, n_cls:], "float32"),
                                (g, g, self.preset.embed_dim))
        resampled = ops.einsum("hi,ijd,wj->hwd", resize_matrix(g, gh, mode), patch_pos,
                               resize_matrix(g, gw, mode))
        return ops.concatenate([ops.cast(self.pos_embed[:, :n_cls], "float32"),
                                ops.reshape(resampled, (1, gh * gw, -1))], axis=1)

    def call(self, images, attention="none", rollout=False, tokens=False, chunk=None,
             facet=None, features=True):
        p = self.preset
        check_attention(p, attention)
        pooled = self.attn_pool is not None
        blocks_want = "none" if pooled and attention == "cls" else attention
        x, rope = self.tokens_in(images)
        kept, means, inputs = [], [], []
        last = len(self.blocks) - 1
        # Without features, logits and tokens nothing reads the last block's output: it computes
        # its attention alone (Block.attention_only), or nothing where none is wanted.
        tail = features or tokens or pooled or facet == (last, "token")
        for i, block in enumerate(self.blocks):
            keep = blocks_want in ("all", "cls_all") or (blocks_want in ("last", "cls")
                                                         and i == last)
            probs = None
            if (blocks_want == "all" or (blocks_want == "last" and i == last)
                    or (rollout and not chunk)):
                probs = "all"
            elif keep:
                probs = p.num_class_tokens
            if rollout and chunk:
                inputs.append(x)
            if facet is not None and facet[0] == i and facet[1] != "token":
                qkv = block.attn.heads(block.norm1(x), rope)[("query", "key", "value").index(
                    facet[1])]
                n_tok = ops.shape(qkv)[1]
                facet_out = ops.reshape(qkv, (-1, n_tok, p.embed_dim))[:, p.num_prefix_tokens:]
            if i < last or tail:
                x, probabilities = block(x, rope=rope, probs=probs, chunk=chunk)
            else:
                probabilities = None if probs is None else block.attention_only(
                    x, rope, None if probs == "all" else probs)
            if facet is not None and facet == (i, "token"):
                facet_out = self.norm(x)[:, p.num_prefix_tokens:]
            if keep:
                rows = attention in ("cls", "cls_all") and probs == "all"
                kept.append(probabilities[:, :, : p.num_class_tokens] if rows else probabilities)
            if rollout and not chunk:
                means.append(ops.mean(probabilities, axis=1))
        out = {"attention": kept}
        start = None
        if tail:
            out.update(self._summary(x, tokens))
        if pooled:
            probe = out.pop("probe")
            if attention != "none" or rollout:
                out["pool_attention"] = probe
            if attention == "cls":
                kept.append(probe)
            start = ops.mean(probe, axis=1)[:, 0]  # (N, T): the probe's head-mean row
        if rollout:
            out["rollout"] = cls_rollout(means, start) if not chunk else self._chunked_rollout(
                inputs, rope, chunk, start)
        if facet is not None:
            out["facet_tokens"] = ops.cast(facet_out, "float32")
        return out

    def _summary(self, x, tokens):
        """What the final norm of the last block's output ``x`` ``(N, T, D)`` gives: float32
        ``features`` (the CLS token, or the pooling head's output and its ``probe`` attention),
        ``logits`` where the preset has a head, and with ``tokens`` ``patch_tokens`` and the
        ``patch_norms`` before the norm."""
        n_prefix = self.preset.num_prefix_tokens
        out = {}
        if tokens:
            out["patch_norms"] = ops.norm(ops.cast(x[:, n_prefix:], "float32"), axis=-1)
        x = ops.cast(self.norm(x), "float32")  # what leaves the model is float32, at any precision
        out["features"] = x[:, 0]
        if self.attn_pool is not None:
            features, probe = self.attn_pool(x)
            out.update(features=ops.cast(features, "float32"), probe=ops.cast(probe, "float32"))
        if tokens:
            out["patch_tokens"] = x[:, n_prefix:]
        if self.heads:
            logits = [ops.cast(head(x[:, i]), "float32") for i, head in enumerate(self.heads)]
            out["logits"] = logits[0] if len(logits) == 1 else (logits[0] + logits[1]) / 2
        return out

    def tokens_in(self, images, rules=None):
        """What the first block takes: ``images`` ``(N, H, W, 3)`` -> the tokens ``(N, T, D)``
        (class tokens, registers, patches; positions added; then ``norm_pre`` where the preset
        has it, as timm places it after the registers) and the RoPE ``(sin, cos)`` or None.
        ``rules``: an LRP forward's (``layers.rule_norm``)."""
        p = self.preset
        grid = p.grid_at(images.shape[1:3])
        x = self.patch_embed(images)
        batch = ops.shape(x)[0] if images.shape[0] is None else images.shape[0]

        def per_image(weight):
            return ops.broadcast_to(weight, (batch,) + tuple(weight.shape[1:]))

        x = ops.concatenate([per_image(t) for t in self.class_tokens] + [x], axis=1)
        if self.pos_embed is not None:
            x = x + ops.cast(self.position_embeddings(grid), x.dtype)
        if self.register_tokens is not None:
            n_cls = p.num_class_tokens
            x = ops.concatenate([x[:, :n_cls], per_image(self.register_tokens), x[:, n_cls:]], 1)
        if self.norm_pre is not None:
            x = rule_norm(self.norm_pre, x, rules)
        rope = (None if self.periods is None
                else rope_sin_cos(self.periods, grid, p.num_prefix_tokens))
        return x, rope

    def relevance_pass(self, images, offsets, tap, rules=None, record=None):
        """The forward pass the explanations differentiate (``vidattn.relevance``): ``images``
        ``(N, H, W, 3)``, ``offsets`` one ``(N, heads, T, T)`` zero tensor per block, added to
        its attention probabilities, and ``tap`` ``(N, T, D)`` zeros added to the last block's
        ``norm1`` output, so that gradients with respect to them are gradients with respect to
        the attention and to those tokens. Returns ``heads_logits``: one ``(N, C)`` per
        classifier head (CLS, then distillation), ``features``: the final-normed CLS token
        ``(N, D)`` (what an embedding target compares), ``attention``: every block's
        probabilities ``(N, heads, T, T)``, and ``tokens``: the last block's ``norm1`` output
        ``(N, T, D)``. With None for the offsets and the tap, only the logits and the features
        mean anything.

        ``rules`` (``layers.LRP_RULES``): the same values with the gradients of an LRP
        (``Block``; the final norm's deviation constant too). ``record`` (a dict) receives
        ``blocks``, each block's intermediates (``Block``), and ``normed``, the final norm's
        output ``(N, T, D)``: what ``vidattn.relevance.lrp`` propagates through.

        With ``pool="map"`` (SigLIP) ``features`` is the attention-pooling head's output; LRP
        through that head is not implemented, so ``rules`` and ``record`` raise VidattnError."""
        if self.attn_pool is not None and (rules is not None or record is not None):
            raise VidattnError(f"LRP: {self.preset.name} pools by an attention probe, and LRP "
                               "through that head is not implemented (use a gradient method)")
        x, rope = self.tokens_in(images, rules)
        attention, last = [], len(self.blocks) - 1
        records = [None if record is None else Record() for _ in self.blocks]
        for i, (block, offset) in enumerate(zip(self.blocks, offsets)):
            out = block(x, rope=rope, offset=offset, tap=tap if i == last else None, rules=rules,
                        record=records[i])
            x, probs = out[:2]
            attention.append(probs)
        x = ops.cast(rule_norm(self.norm, x, rules), "float32")
        if record is not None:
            record.update(blocks=[r.values for r in records], normed=x)
        features = x[:, 0] if self.attn_pool is None else ops.cast(self.attn_pool(x)[0], "float32")
        return {"heads_logits": [ops.cast(head(x[:, i]), "float32")
                                 for i, head in enumerate(self.heads)], "features": features,
                "attention": attention, "tokens": out[2] if tap is not None else None}

    def _chunked_rollout(self, inputs, rope, chunk, start=None):
        """:func:`cls_rollout` from each block's input, the attention recomputed in chunks;
        ``start`` as there."""
        if start is None:
            row = ops.cast(ops.arange(inputs[0].shape[1]) == 0, "float32")
            row = ops.zeros_like(ops.cast(inputs[0][:, :, 0], "float32")) + row  # (N, T): e_0
        else:
            row = ops.cast(start, "float32")
        for block, x in zip(reversed(self.blocks), reversed(inputs)):
            q, k, _ = block.attn.heads(block.norm1(x), rope)
            row = rollout_step(row, q, k, block.attn.scale, chunk)
        return row

    # -- checkpoint mapping -------------------------------------------------------------------

    def checkpoint_layout(self) -> dict[str, Slot]:
        """Each canonical checkpoint name (the official repositories' names: timm's and DINO's,
        DINOv2's ``ls1.gamma``, ``register_tokens``, ``mlp.w12``/``w3``, DINOv3's
        ``rope_embed.periods`` and ``attn.qkv.bias_mask``, timm's ``norm_pre`` and
        ``attn_pool.*`` for CLIP and SigLIP; no ``patch_embed.proj.bias`` without
        ``patch_bias``) -> its :class:`Slot`."""
        p, d, p_mlp = self.preset.patch_size, self.preset.embed_dim, self.preset.mlp

        def linear(prefix, dense):
            (fan_in, fan_out) = dense.kernel.shape
            return {
                f"{prefix}.weight": Slot(dense.kernel, (fan_out, fan_in), np.transpose,
                                         np.transpose),
                f"{prefix}.bias": Slot(dense.bias, (fan_out,)),
            }

        def vector(prefix, weights):
            return {f"{prefix}.{name}": Slot(w, tuple(w.shape)) for name, w in weights.items()}

        def conv_to_dense(w):  # (D, 3, p, p) -> (p*p*3, D), patches flattened (row, col, ch)
            return np.transpose(w, (2, 3, 1, 0)).reshape(p * p * 3, d)

        def dense_to_conv(k):
            return k.reshape(p, p, 3, d).transpose(3, 2, 0, 1)

        def norm(prefix, layer):
            return vector(prefix, {"weight": layer.gamma, "bias": layer.beta})

        layout = {
            "patch_embed.proj.weight": Slot(self.patch_embed.proj.kernel, (d, 3, p, p),
                                            conv_to_dense, dense_to_conv),
            **norm("norm", self.norm),
        }
        if self.patch_embed.proj.bias is not None:
            layout["patch_embed.proj.bias"] = Slot(self.patch_embed.proj.bias, (d,))
        if self.norm_pre is not None:
            layout.update(norm("norm_pre", self.norm_pre))
        for token in self.class_tokens:
            layout[token.name] = Slot(token, (1, 1, d))
        if self.register_tokens is not None:
            layout["register_tokens"] = Slot(self.register_tokens,
                                             tuple(self.register_tokens.shape))
        if self.pos_embed is not None:
            layout["pos_embed"] = Slot(self.pos_embed, tuple(self.pos_embed.shape))
        if self.periods is not None:
            layout["rope_embed.periods"] = Slot(self.periods, tuple(self.periods.shape))
        for i, b in enumerate(self.blocks):
            at = f"blocks.{i}."
            layout.update(norm(at + "norm1", b.norm1))
            layout.update(linear(at + "attn.qkv", b.attn.qkv))
            if b.attn.bias_mask is not None:
                layout[at + "attn.qkv.bias_mask"] = Slot(b.attn.bias_mask, (3 * d,))
            layout.update(linear(at + "attn.proj", b.attn.proj))
            layout.update(norm(at + "norm2", b.norm2))
            for name in ("w12", "w3") if p_mlp == "swiglu" else ("fc1", "fc2"):
                layout.update(linear(f"{at}mlp.{name}", getattr(b.mlp, name)))
            for ls in (b.ls1, b.ls2):
                if ls is not None:
                    layout[f"{at}{ls.name}.gamma"] = Slot(ls.gamma, (d,))
        for head in self.heads:
            layout.update(linear(head.name, head))
        if (pool := self.attn_pool) is not None:
            layout["attn_pool.latent"] = Slot(pool.latent, (1, 1, d))
            for name in ("q", "kv", "proj"):
                layout.update(linear(f"attn_pool.{name}", getattr(pool, name)))
            layout.update(norm("attn_pool.norm", pool.norm))
            for name in ("fc1", "fc2"):
                layout.update(linear(f"attn_pool.mlp.{name}", getattr(pool.mlp, name)))
        return layout


def load_state_dict(model: ViT, state: dict, source="checkpoint"):
    """Assign a canonical state dict (name -> numpy array, torch layouts) to ``model``.

    Every problem is collected first (missing keys, unexpected keys, wrong shapes, tensors that
    are not floating point or hold NaN or infinity) and reported in one :class:`VidattnError`
    naming ``source``, so a wrong preset or a broken file is obvious at once; nothing is assigned
    unless everything fits. Non-finite weights (a diverged run, damaged data) would turn every
    attention map into NaN, so they are refused rather than rendered.
    """
    layout = model.checkpoint_layout()
    missing = sorted(set(layout) - set(state))
    extra = sorted(set(state) - set(layout))
    bad_shape, bad_dtype, non_finite = [], [], []
    for name in sorted(set(layout) & set(state)):
        want = layout[name].shape
        value = np.asarray(state[name])
        if value.shape != want:
            bad_shape.append(f"{name} {value.shape} != {want}")
        elif value.dtype.kind != "f":
            bad_dtype.append(f"{name} {value.dtype}")
        elif not np.isfinite(value).all():
            non_finite.append(name)
    problems = []
    for label, items in (("missing", missing), ("unexpected", extra), ("wrong shape", bad_shape),
                         ("not floating point", bad_dtype), ("NaN or infinite values", non_finite)):
        if items:
            shown = ", ".join(items[:6]) + (f" (+{len(items) - 6} more)" if len(items) > 6 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise VidattnError(
            f"does not fit preset {model.preset.name!r}: " + "; ".join(problems), path=source
        )
    for name, slot in layout.items():
        slot.variable.assign(slot.to_keras(np.asarray(state[name], np.float32)))


def randomize(model: ViT, seed: int | None = 0):
    """Give ``model`` random weights drawn from ``seed`` alone, the same on every backend and
    every run: timm's ViT initialisation (truncated normal of std 0.02 within two stds for
    matrices, tokens and positions; zero biases; unit norms and LayerScale). RoPE periods and
    the key-bias mask keep the values the family's code gives them."""
    rng = np.random.default_rng(seed)
    for name, slot in model.checkpoint_layout().items():
        if name.endswith((".periods", ".bias_mask")):
            continue
        if name.endswith((".bias", "norm.weight", "norm1.weight", "norm2.weight",
                          "norm_pre.weight", ".gamma")):
            value = np.full(slot.shape, 0.0 if name.endswith(".bias") else 1.0)
        else:
            value = np.clip(rng.standard_normal(slot.shape), -2, 2) * 0.02
        slot.variable.assign(slot.to_keras(value.astype(np.float32)))


def export_state_dict(model: ViT, dtype=np.float32) -> dict[str, np.ndarray]:
    """The backbone's weights under canonical names in torch layouts: the inverse of
    ``load_state_dict``. What an official ``.pth`` or a timm safetensors file of the same model
    holds (DINOv2/DINOv3 files add a ``mask_token`` that inference never uses)."""
    return {
        name: np.ascontiguousarray(slot.from_keras(np.asarray(slot.variable.numpy())), dtype=dtype)
        for name, slot in model.checkpoint_layout().items()
    }
