"""The language model's prefill cost in floating-point operations: a hardware-independent cost column.

Timings on a shared machine are noisy, and they depend on the hardware; the FLOPs of the language
model's prefill depend only on its shape and the sequence it is given, so they compare methods exactly.
For a decoder layer of hidden size ``d``, query width ``d_q = heads * head_dim``, key/value width
``d_kv = kv_heads * head_dim`` and gated MLP width ``m``, on ``n`` tokens:

    flops(n) = 2 * (n * d * (2 d_q + 2 d_kv)  +  2 n^2 d_q  +  3 n d m)

the q, k, v, o projections, the attention scores and their weighted sum (counted in full, as the FastV
paper counts them), and the gate, up and down projections of the MLP; 2 FLOPs per multiply-add. Norms,
rotary embeddings, softmax and the LM head (one position at prefill) are left out: they are small and
the same for every method. A method that prunes before the language model gives every layer the pruned
length; FastV gives layers ``0 .. K-1`` the full length and the rest the pruned one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["DecoderShape", "prefill_flops"]


@dataclass(frozen=True)
class DecoderShape:
    """The sizes of a decoder-only language model that set its FLOPs.

    Attributes:
        layers: decoder layers.
        hidden: hidden size ``d``.
        intermediate: gated MLP width ``m``.
        heads, kv_heads: attention heads, and key/value heads (grouped-query attention).
        head_dim: width of one head.
    """

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int

    @classmethod
    def from_config(cls, config: Any) -> DecoderShape:
        """The shape of a transformers config: a VLM's ``text_config``, or a language model's own config.

        Raises ``ValueError`` naming the missing field when the config does not describe a decoder.
        """
        text = getattr(config, "text_config", None) or config
        values = {}
        for name, attr in (
            ("layers", "num_hidden_layers"),
            ("hidden", "hidden_size"),
            ("intermediate", "intermediate_size"),
            ("heads", "num_attention_heads"),
        ):
            value = getattr(text, attr, None)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{type(text).__name__} has no positive int {attr} (got {value!r}): not a decoder")
            values[name] = value
        kv_heads = getattr(text, "num_key_value_heads", None) or values["heads"]
        head_dim = getattr(text, "head_dim", None) or values["hidden"] // values["heads"]
        return cls(kv_heads=int(kv_heads), head_dim=int(head_dim), **values)

    def layer_flops(self, n: int) -> float:
        """FLOPs of one decoder layer on ``n`` tokens (the module docstring gives the formula)."""
        d, m = self.hidden, self.intermediate
        d_q, d_kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return 2.0 * (n * d * (2 * d_q + 2 * d_kv) + 2 * n * n * d_q + 3 * n * d * m)


def prefill_flops(
    shape: DecoderShape, length: int, *, pruned: int | None = None, prune_layer: int | None = None
) -> float:
    """FLOPs of one sequence's prefill.

    Args:
        shape: the language model's sizes.
        length: the tokens the language model is given (for FastV, the full sequence).
        pruned: for FastV, the tokens left after layer ``prune_layer``; None when nothing is dropped inside.
        prune_layer: the layer before which FastV drops tokens.

    Example:
        >>> shape = DecoderShape(layers=2, hidden=4, intermediate=8, heads=2, kv_heads=1, head_dim=2)
        >>> prefill_flops(shape, 10), prefill_flops(shape, 10, pruned=5, prune_layer=1)
        (8960.0, 6320.0)
    """
    if pruned is None or prune_layer is None:
        return shape.layers * shape.layer_flops(length)
    before = min(prune_layer, shape.layers)
    return before * shape.layer_flops(length) + (shape.layers - before) * shape.layer_flops(pruned)
