"""Softmax-to-Hedgehog conversion of a trained Three-Phase Transformer (docs/model.md).

The recipe of the Hedgehog paper: keep every weight of the trained model,
replace the softmax attention of the chosen layers by Hedgehog attention
built on the same q/k/v/o projections, freeze everything but the new feature
maps, and train those to reproduce each layer's softmax attention weights
(:func:`~tpt_ops.nn.hedgehog_distillation_loss`).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tpt_ops.models.transformer import ThreePhaseTransformer
from tpt_ops.nn.attention import GroupedQueryAttention
from tpt_ops.nn.hedgehog import HedgehogAttention


@dataclass
class HedgehogConversion:
    """What :func:`convert_to_hedgehog` returns: the converted model and how to distil its feature maps."""

    model: ThreePhaseTransformer
    #: The converted layer indices, ascending.
    layers: tuple[int, ...]

    def attention_layers(self) -> list[HedgehogAttention]:
        """The converted attention modules, in layer order."""
        return [self.model.blocks[i].attn for i in self.layers]

    def parameters(self) -> list[nn.Parameter]:
        """The trainable parameters: the q and k feature maps of every converted layer."""
        return [p for attn in self.attention_layers() for p in attn.feature_map_parameters()]

    def distillation_loss(self, ids: Tensor) -> Tensor:
        """The mean over the converted layers of their distillation loss on token ids ``[B, T]``.

        The forward runs the teacher: every converted layer computes its softmax
        attention (RoPE included) as its output, so each layer's feature maps see
        the hidden states of the original model, as in layer-wise attention transfer.
        """
        attns = self.attention_layers()
        for attn in attns:
            attn.distilling = True
        try:
            self.model(ids, last_only=True)
            losses = [attn.distillation_loss for attn in attns]
        finally:
            for attn in attns:
                attn.distilling = False
                attn.distillation_loss = None
        return torch.stack(losses).mean()


def convert_to_hedgehog(model: ThreePhaseTransformer, layers: Iterable[int] | None = None,
                        feature_dim: int | None = None, feature_bias: bool = True) -> HedgehogConversion:
    """Converts ``model`` in place: the softmax attention of ``layers`` (None: every softmax layer)
    becomes :class:`~tpt_ops.nn.HedgehogAttention` with the same ``qkv``/``o`` weights and fresh feature
    maps (``feature_dim`` features per head, default head_dim: the identity), ``model.config`` says so,
    and every parameter but the new feature maps is frozen (``requires_grad=False``).

    Returns a :class:`HedgehogConversion` whose :meth:`~HedgehogConversion.parameters` go to the
    optimizer and whose :meth:`~HedgehogConversion.distillation_loss` is the loss to minimise. Copy
    the model first (``copy.deepcopy``) to keep the softmax original. ``ValueError`` for a layer index
    out of range, named twice or already Hedgehog, or a config the new layout does not satisfy.
    """
    config = model.config
    n = len(model.blocks)
    softmax_layers = [i for i, block in enumerate(model.blocks) if not isinstance(block.attn, HedgehogAttention)]
    chosen = tuple(softmax_layers) if layers is None else tuple(layers)
    if not chosen:
        raise ValueError("convert_to_hedgehog: no softmax attention layer to convert")
    for i in chosen:
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < n:
            raise ValueError(f"convert_to_hedgehog: {i!r} is not a layer index in 0..{n - 1}")
        if i not in softmax_layers:
            raise ValueError(f"convert_to_hedgehog: layer {i} already has Hedgehog attention")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"convert_to_hedgehog: a layer is named twice in {chosen!r}")
    chosen = tuple(sorted(chosen))
    hedgehog = tuple(sorted(set(range(n)) - set(softmax_layers) | set(chosen)))
    if config.attention == "hedgehog" and (config.hedgehog_feature_dim, config.hedgehog_feature_bias) != (
            feature_dim, feature_bias):
        raise ValueError("convert_to_hedgehog: the model's Hedgehog layers have feature_dim="
                         f"{config.hedgehog_feature_dim}, feature_bias={config.hedgehog_feature_bias}; "
                         f"got feature_dim={feature_dim}, feature_bias={feature_bias}")
    new_config = config.replace(attention="hedgehog", hedgehog_layers=None if len(hedgehog) == n else hedgehog,
                                hedgehog_feature_dim=feature_dim, hedgehog_feature_bias=feature_bias)

    for p in model.parameters():
        p.requires_grad_(False)
    for i in chosen:
        old: GroupedQueryAttention = model.blocks[i].attn
        new = HedgehogAttention(old.d_model, old.n_q_heads, old.n_kv_heads, old.n_phases, feature_dim, feature_bias,
                                old.backend, device=old.qkv.weight.device, dtype=old.qkv.weight.dtype)
        with torch.no_grad():
            new.qkv.weight.copy_(old.qkv.weight)
            new.o.weight.copy_(old.o.weight)
        new.qkv.weight.requires_grad_(False)
        new.o.weight.requires_grad_(False)
        new.train(old.training)
        model.blocks[i].attn = new
    model.config = new_config
    return HedgehogConversion(model, chosen)
