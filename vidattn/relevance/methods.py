"""The relevance methods, each as its reference computes it, from one forward and backward pass.

``backward_pass`` runs the model once with zeros added to every block's attention and to the
last block's ``norm1`` output (``ViT.relevance_pass``) and differentiates the explained logit
with respect to them (``gradients``): the attention ``A_b`` ``(N, heads, T, T)`` of each block,
its gradient ``dA_b``, the last block's normed tokens ``X`` ``(N, T, D)`` and ``dX``. Each
method turns those into a map ``(N, gh, gw)`` over the patches, raw (no min-max), from the row
of the explained class token (``c``: 0, or 1 for distilled DeiT's distillation head). The LRP
methods need more: transformer-attribution an explicit relprop over a recorded forward
(``lrp``), attnlrp and cp-lrp a pass of their own whose forward carries the rules
(``layers.LRP_RULES``, ``method_rules``), differentiated at the pixels too.

==================  ====================================================================
method              what it computes, and its reference
==================  ====================================================================
``generic``         Chefer et al., ICCV 2021 (Transformer-MM-Explainability's ViT notebook,
                    ``generate_relevance``): ``R = I``; for each block, first to last,
                    ``R += mean_h((dA ⊙ A)⁺) @ R``; the map is ``R[c, patches]``
``grad-rollout``    jacobgil/vit-explain ``vit_grad_rollout.py``: for each block
                    ``F = mean_h(A ⊙ dA)``, negatives to 0, the ``discard`` smallest share of
                    its entries to 0, ``F = (F + I) / 2`` with rows normalised, and
                    ``J = F_L ... F_1``; the map is ``J[c, patches]``
``gradcam``         jacobgil/pytorch-grad-cam's ViT recipe (``usage_examples/vit_example.py``):
                    the last block's ``norm1`` tokens, prefix tokens dropped, as a
                    ``(D, gh, gw)`` activation; weights ``mean_{patches} dX``; the map is
                    ``(sum_d w_d X_d)⁺``
``attention``       Chefer's ``Baselines.generate_cam_attn``: the last block's class row
                    ``A[:, c, patches]`` weighted per head by the mean of its gradient over
                    the patches, averaged over heads, negatives to 0
``rollout``         Chefer's ``Baselines.generate_rollout``: the head mean of each block plus
                    ``I``, rows normalised, multiplied last block first; the row ``c``
``transformer-      Chefer et al., CVPR 2021 (Transformer-Explainability ``baselines/ViT``,
attribution``       ``generate_LRP(method="transformer_attribution", start_layer=0)``): LRP
                    from the class's one-hot (``lrp.relprop``: its rules per layer) to each
                    block's attention relevance ``R_A``; per block ``mean_h((dA ⊙ R_A)⁺)
                    + I``, multiplied from ``start_layer``, rows *not* normalised; row ``c``
``attnlrp``         Achtibat et al., ICML 2024 (LRP-eXplains-Transformers, ``lxt/efficient``):
                    gradient x input on a forward with its rules (LayerNorm's deviation
                    constant, GELU's identity rule, the gradients of queries and keys / 4 and
                    of values / 2: lxt's attention wrapper), at the pixels, summed over the
                    channels (lxt's ViT example) and over each patch's pixels
``cp-lrp``          the variant lxt's ViT example runs (``lxt/efficient/models/vit_torch.py``
                    ``cp_LRP``): the same, but queries and keys constant (attention is not
                    explained through, CP-LRP, Ali et al. 2022)
==================  ====================================================================

Where we differ on purpose (each reference runs at batch 1; here every image of a batch is its
own): grad-rollout pairs each block's attention with *its own* gradient (the reference zips the
forward-order attentions with the backward-order gradients, vit-explain issue 6), normalises
the rows of ``(F + I) / 2`` (the reference divides by the sums of a broadcast that, at batch
1, scales columns), and discards per image (the reference only in the batch's first); gradcam
and every map drop all the prefix tokens (class, distillation, registers: the reference drops
the first token only); the references' final min-max scaling is left to the drawing.
transformer-attribution's ``Add`` rule sums per image (theirs over the whole tensor, so the
batch); distilled DeiT, which their code lacks, starts from the head explained, the mean's two
summands split by that ``Add`` rule. attnlrp and cp-lrp run every linear and the patch
convolution at plain gradient x input (LRP-0: zennit's gamma 0, where lxt's ViT example sweeps
gamma rules from zennit), and sum the pixels' relevance per patch for the map on the grid.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from vidattn import attention as am
from vidattn.backend import ops
from vidattn.errors import VidattnError
from vidattn.models.layers import LRP_RULES
from vidattn.models.memory import explain_plan
from vidattn.options import EXPLAIN_HEADS, EXPLAIN_METHODS
from vidattn.relevance import lrp
from vidattn.relevance.gradients import value_and_gradients
from vidattn.relevance.targets import check_classifier, describe, is_embedding, resolve, top_k

__all__ = ["DEFAULT_DISCARD", "METHODS", "Explanation", "Pass", "backward_pass", "explain_image",
           "explain_maps"]

DEFAULT_DISCARD = 0.9  # vit-explain's --discard_ratio default


@dataclass
class Pass:
    """One forward and backward pass: ``logits`` ``(N, C)`` of the explained head (an embedding
    target: ``(N, 1)``, the cosine similarities), ``target`` ``(N,)`` the explained classes
    (an embedding target: zeros), and per block ``attention`` and ``grads`` ``(N, heads, T,
    T)``; ``tokens`` and ``token_grads`` ``(N, T, D)``: the last block's ``norm1`` output and its
    gradient; ``row``: the explained class token's rows to read (one or two token indices);
    ``images`` ``(N, H, W, 3)`` the preprocessed images; ``image_grads`` their gradient, from a
    pass with LRP ``rules`` (``backward_pass``), else None."""

    logits: np.ndarray
    target: np.ndarray
    attention: list
    grads: list
    tokens: np.ndarray
    token_grads: np.ndarray
    row: tuple
    images: np.ndarray | None = None
    image_grads: np.ndarray | None = None


def head_rows(preset, head: str) -> tuple:
    """The class-token rows a head's maps read: the CLS token's, the distillation token's, or
    (``mean``, whose logit is the heads' mean) both, averaged."""
    if head not in EXPLAIN_HEADS:
        raise ValueError(f"head must be one of {EXPLAIN_HEADS}, got {head!r}")
    if preset.num_class_tokens == 1 or head == "cls":
        return (0,)
    return (1,) if head == "dist" else (0, 1)


def _head_logits(heads_logits, head):
    if len(heads_logits) == 1 or head == "cls":
        return heads_logits[0]
    return heads_logits[1] if head == "dist" else (heads_logits[0] + heads_logits[1]) / 2


def backward_pass(model, images, target=None, head: str = "mean", rules=None) -> Pass:
    """Forward the preprocessed ``images`` ``(N, H, W, 3)`` and differentiate each image's
    ``target`` logit (``targets.resolve``: None or "top1" for its best class) of ``head``
    (distilled DeiT: "cls", "dist" or "mean", timm's inference output) -> ``Pass``. A
    ``targets.Embedding`` target differentiates instead the cosine similarity of each image's CLS
    feature to its reference (any preset, with or without a head; the CLS row). The images go
    in batches that fit the model's memory budget (``memory.explain_plan``: a single image that
    cannot fit is a one-line VidattnError before any work). With LRP ``rules``
    (``layers.LRP_RULES``) the forward's gradients are that LRP's, and the images' gradient is
    taken too (``Pass.image_grads``)."""
    p = model.preset
    check_classifier(p, target)
    if rules is not None:
        lrp.check_blocks(p, rules)
    images = np.asarray(images, np.float32)
    n, t = len(images), p.tokens_at(images.shape[1:3])
    step = explain_plan(p, images.shape[1:3], n, model.memory_budget).batch
    if step < n:
        return _joined([backward_pass(model, images[i : i + step],
                                      target.part(i, i + step) if is_embedding(target) else target,
                                      head, rules) for i in range(0, n, step)])
    embedding = is_embedding(target)
    rows = (0,) if embedding else head_rows(p, head)
    x = ops.convert_to_tensor(images)
    logits = None  # the top class needs the logits first: a pass without gradients
    if top_k(target) == 1:
        first = model.backbone.relevance_pass(x, [None] * p.depth, None)["heads_logits"]
        logits = np.asarray(ops.convert_to_numpy(_head_logits(first, head)))
    if embedding:  # the score's weights: the unit reference, or the class's one-hot
        classes, weights = np.zeros(n, np.int64), ops.convert_to_tensor(target.unit(n))
    else:
        classes = resolve(p, target, np.zeros((n, p.num_classes)) if logits is None else logits)
        weights = ops.convert_to_tensor(np.eye(p.num_classes, dtype=np.float32)[classes])

    def explained(inputs):
        zeros = inputs[: p.depth + 1]
        out = model.backbone.relevance_pass(inputs[-1] if rules else x, zeros[:-1], zeros[-1],
                                            rules)
        if embedding:  # (N, 1): the cosine of each CLS feature to its unit reference
            f = out["features"]
            explained_logits = ops.sum(f * weights, -1, keepdims=True) / ops.norm(f, axis=-1,
                                                                                   keepdims=True)
        else:
            explained_logits = _head_logits(out["heads_logits"], head)
        score = ops.sum(explained_logits * (1.0 if embedding else weights))
        return score, {"attention": out["attention"], "tokens": out["tokens"],
                       "logits": explained_logits}

    zeros = [np.zeros((n, p.num_heads, t, t), np.float32) for _ in range(p.depth)]
    zeros.append(np.zeros((n, t, p.embed_dim), np.float32))
    aux, grads = value_and_gradients(explained, zeros + ([images] if rules else []))
    return Pass(aux["logits"], classes, aux["attention"], grads[: p.depth], aux["tokens"],
                grads[p.depth], rows, images, grads[-1] if rules else None)


def _joined(passes) -> Pass:
    """The ``Pass`` of a batch from those of its parts, in order: arrays concatenated along the
    images, lists of them block by block, the rest (``row``) as the first part has it."""
    def join(values):
        if isinstance(values[0], list):
            return [join(list(block)) for block in zip(*values)]
        return np.concatenate(values) if isinstance(values[0], np.ndarray) else values[0]

    return Pass(**{f.name: join([getattr(q, f.name) for q in passes]) for f in fields(Pass)})


def _rows(matrix, rows, n_prefix):
    """``(N, T, T)`` -> the mean of the class rows ``rows`` over the patch columns ``(N, P)``."""
    return matrix[:, list(rows), n_prefix:].mean(axis=1)


def generic(ps: Pass, n_prefix: int, **_) -> np.ndarray:
    """Chefer et al. ICCV 2021 (see the module docstring) -> ``(N, P)``."""
    t = ps.attention[0].shape[-1]
    relevance = np.broadcast_to(np.eye(t, dtype=np.float64), (len(ps.logits), t, t)).copy()
    for a, g in zip(ps.attention, ps.grads):
        cam = np.maximum(g.astype(np.float64) * a, 0).mean(axis=1)
        relevance += cam @ relevance
    return _rows(relevance, ps.row, n_prefix)


def grad_rollout(ps: Pass, n_prefix: int, discard: float = DEFAULT_DISCARD, **_) -> np.ndarray:
    """vit-explain's gradient rollout, its layer pairing fixed (see the module docstring): each
    block's fused, discarded map chained as ``attention.rollout_matrix`` chains attention (the
    reference's halving of ``F + I`` cancels in the row normalisation)."""
    n, t = len(ps.logits), ps.attention[0].shape[-1]
    dropped = int(t * t * discard)
    fused_blocks = []
    for a, g in zip(ps.attention, ps.grads):
        fused = np.maximum((a.astype(np.float64) * g).mean(axis=1), 0).reshape(n, -1)
        if dropped:
            smallest = np.argpartition(fused, dropped - 1, axis=1)[:, :dropped]
            np.put_along_axis(fused, smallest, 0.0, axis=1)
        fused_blocks.append(fused.reshape(n, 1, t, t))  # one "head": rollout's mean keeps it
    return _rows(am.rollout_matrix(fused_blocks), ps.row, n_prefix)


def gradcam(ps: Pass, n_prefix: int, **_) -> np.ndarray:
    """pytorch-grad-cam's Grad-CAM on the last block's ``norm1`` tokens -> ``(N, P)``."""
    x = ps.tokens[:, n_prefix:].astype(np.float64)
    weights = ps.token_grads[:, n_prefix:].mean(axis=1)  # (N, D)
    return np.maximum(np.einsum("npd,nd->np", x, weights), 0)


def attention_cam(ps: Pass, n_prefix: int, **_) -> np.ndarray:
    """Chefer's attention baseline (Grad-CAM on the last attention) -> ``(N, P)``."""
    a, g = ps.attention[-1].astype(np.float64), ps.grads[-1]
    rows = list(ps.row)
    cam = a[:, :, rows, n_prefix:].mean(axis=2)  # (N, heads, P)
    weights = g[:, :, rows, n_prefix:].mean(axis=2).mean(axis=-1, keepdims=True)
    return np.maximum((cam * weights).mean(axis=1), 0)


def rollout(ps: Pass, n_prefix: int, **_) -> np.ndarray:
    """Chefer's rollout baseline (class-agnostic), the study's rollout
    (``attention.rollout_matrix``) read at the class row -> ``(N, P)``."""
    return _rows(am.rollout_matrix(ps.attention), ps.row, n_prefix)


def transformer_attribution(ps: Pass, n_prefix: int, model=None, start_layer: int = 0,
                            **_) -> np.ndarray:
    """Chefer et al. CVPR 2021 (``generate_LRP(method="transformer_attribution")``): each
    block's LRP attention relevance (``lrp.relprop``) times its gradient, positive part, head
    mean, plus ``I``, multiplied from ``start_layer`` on without row normalisation; the class
    row -> ``(N, P)``."""
    lrp.check_blocks(model.preset, "transformer-attribution")
    if ps.logits.shape[1] != model.preset.num_classes:  # an embedding target's one score
        raise VidattnError("--explain-method transformer-attribution propagates a class's "
                           "one-hot from the classifier head: it explains classes, not an "
                           "embedding's similarity")
    cams, _ = lrp.relprop(model, lrp.trace(model, ps.images), ps.target, ps.row)
    eye = np.eye(cams[0].shape[-1])
    joint = eye
    for cam, g in list(zip(cams, ps.grads))[start_layer:]:
        joint = (np.maximum(g * cam, 0).mean(axis=1) + eye) @ joint
    return _rows(joint, ps.row, n_prefix)


def lrp_map(ps: Pass, n_prefix: int, model=None, **_) -> np.ndarray:
    """AttnLRP or CP-LRP (the ``Pass`` of a forward with those ``rules``): as lxt's ViT example,
    the relevance of each pixel, ``sum_channels(x ⊙ ∂score/∂x)``, here summed over each
    patch's pixels -> ``(N, P)``."""
    pixels = (ps.images.astype(np.float64) * ps.image_grads).sum(axis=-1)  # (N, H, W)
    p, n = model.preset.patch_size, len(pixels)
    gh, gw = model.preset.grid_at(pixels.shape[1:])
    return pixels[:, : gh * p, : gw * p].reshape(n, gh, p, gw, p).sum(axis=(2, 4)).reshape(n, -1)


METHODS = dict(zip(EXPLAIN_METHODS, (generic, grad_rollout, gradcam, attention_cam, rollout,
                                     transformer_attribution, lrp_map, lrp_map)))


def method_rules(method: str):
    """The LRP forward a method's pass needs (``layers.LRP_RULES``: its own name), or None."""
    return method if method in LRP_RULES else None


def explain_maps(model, images, method: str = "generic", target=None, head: str = "mean",
                 **options):
    """Maps ``(N, gh, gw)`` float64, raw, of ``method`` (``METHODS``) for the preprocessed
    ``images`` ``(N, H, W, 3)``, and the ``Pass`` they come from (its ``target`` and
    ``logits``). ``options``: ``discard`` for grad-rollout, ``start_layer`` for
    transformer-attribution."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    ps = backward_pass(model, images, target, head, method_rules(method))
    flat = METHODS[method](ps, model.preset.num_prefix_tokens, model=model, **options)
    return flat.reshape(len(flat), *model.preset.grid_at(np.shape(images)[1:3])), ps


@dataclass
class Explanation:
    """One image's maps: ``classes`` ``[{class, name, probability}]`` (the explained head's
    softmax), ``methods`` their names, and ``maps`` ``(classes, methods, gh, gw)`` float64,
    raw (no min-max)."""

    classes: list
    methods: list
    maps: np.ndarray


def explain_image(model, image_input, target="top1", methods=EXPLAIN_METHODS,
                  head: str = "mean", **options) -> Explanation:
    """Every method's map for each class of ``target`` (``topK``, an index or a name) on one
    preprocessed image ``(H, W, 3)``: one backward pass per class, shared by the methods. An
    ``targets.Embedding`` target gives one row, ``{class: None, name, similarity}`` (the cosine
    similarity explained: a reference equal to the image is at its maximum, 1, where its
    gradient and so every gradient method's map is 0)."""
    x = np.asarray(image_input, np.float32)[None]
    p, k = model.preset, top_k(target)
    first = backward_pass(model, x, target if not k or k == 1 else None, head)
    logits = first.logits[0].astype(np.float64)
    probs = np.exp(logits - logits.max())
    order = np.argsort(-probs / probs.sum(), kind="stable")[:k] if k else first.target
    grid = p.grid_at(x.shape[1:3])
    maps = []
    for c in order:
        passes = {None: first if c == first.target[0] else backward_pass(model, x, int(c), head)}
        for rules in {method_rules(m) for m in methods} - {None}:  # a pass per LRP forward
            passes[rules] = backward_pass(model, x, target if is_embedding(target) else int(c),
                                          head, rules)
        maps.append([METHODS[m](passes[method_rules(m)], p.num_prefix_tokens, model=model,
                                **options).reshape(grid) for m in methods])
    classes = describe(p, np.repeat(first.logits[:1], len(order), axis=0), order, target)
    return Explanation(classes, list(methods), np.asarray(maps))
