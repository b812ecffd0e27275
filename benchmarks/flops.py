"""Analytic FLOP model of FLIP pretraining and finetuning (matmul FLOPs; 1 multiply-add = 2 FLOPs).

Encoder (BERT family: hidden ``H``, FFN ``I``, ``k`` layers, sequence length ``L``), forward,
per sequence::

    k * L * (8 H^2 + 4 H I)      Q, K, V, output projections (4 H x H) and the FFN (H x I, I x H)
  + k * 4 L^2 H                  attention scores Q K^T and the weighted sum over values
  + 0                            embeddings (a lookup + adds + LayerNorm: O(L H) elementwise)

LayerNorm, softmax, GELU, biases and residual adds are elementwise, O(k L (H + I + L heads))
(< 1% of the matmuls at these sizes) and are left out, as is the gather of the embedding table.

Training = forward + backward ≈ 3 x forward (the backward computes the gradients of both the
activations and the weights, each a matmul of the forward's size).

Pretraining (``stages/pretrain.py``, MLM + MTM + ICL all on): the PLM runs once on the stacked
[text; masked text] batch, i.e. **two sequences per sample**; heads per sample (forward):

- MLM (``MLMHead``), per masked token: ``2 (H + D) h + 2 h V``  (transform to ``h``, decoder to
  the vocabulary ``V``); ``m`` masked tokens per sample (field-level masking, measured);
- MTM (``MTMHead``): ``2 D H`` (query) ``+ 4 L H`` (cross-attention) ``+ 2 F (H h + h h)`` (the
  ``F`` per-field MLPs, computed for every field) ``+ f (K + 1) 2 h`` (NCE scores of ``f`` masked
  fields against ``K`` noise features);
- ICL (``ICLHead``): ``2 (H + D) p`` (projections) ``+ 2 * 2 B p`` (the B x B logits, both directions);
- ID model: two forwards (``v``, ``v̂``), counted by ``torch.utils.flop_counter`` on the real model.

Finetuning (FLIP, ``FinetuneJointModule``): one sequence per sample, + ID model + two linear heads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class EncoderShape:
    hidden: int = 384  # all-MiniLM-L6-v2
    intermediate: int = 1536
    layers: int = 6
    heads: int = 12
    vocab: int = 30522

    @classmethod
    def from_config(cls, config, layers: int | None = None) -> EncoderShape:
        return cls(config.hidden_size, config.intermediate_size, layers or config.num_hidden_layers,
                   config.num_attention_heads, config.vocab_size)


def encoder_forward(enc: EncoderShape, length: float) -> dict:
    """Forward FLOPs of one sequence of ``length`` tokens."""
    dense = enc.layers * length * (8 * enc.hidden**2 + 4 * enc.hidden * enc.intermediate)
    attention = enc.layers * 4 * length**2 * enc.hidden
    return {"dense": dense, "attention": attention, "embedding": 0.0, "total": dense + attention}


def pretrain_per_sample(
    enc: EncoderShape,
    length: float,
    masked_tokens: float,
    masked_fields: float,
    id_forward: float,
    id_dim: int,
    num_fields: int,
    batch: int,
    head_hidden: int = 256,
    icl_dim: int = 128,
    num_noise: int = 25,
) -> dict:
    """FLOPs per pretraining sample: forward parts and the training total (3 x forward)."""
    H, D, h, V = enc.hidden, id_dim, head_hidden, enc.vocab
    plm = 2 * encoder_forward(enc, length)["total"]  # [text; masked text]
    mlm = masked_tokens * (2 * (H + D) * h + 2 * h * V)
    mtm = 2 * D * H + 4 * length * H + 2 * num_fields * (H * h + h * h) + masked_fields * (num_noise + 1) * 2 * h
    icl = 2 * (H + D) * icl_dim + 4 * batch * icl_dim
    ids = 2 * id_forward
    forward = plm + mlm + mtm + icl + ids
    return {"plm_forward": plm, "mlm_forward": mlm, "mtm_forward": mtm, "icl_forward": icl, "id_forward": ids,
            "forward": forward, "train": 3 * forward, "plm_share": plm / forward}


def finetune_per_sample(enc: EncoderShape, length: float, id_forward: float) -> dict:
    """FLOPs per FLIP (joint) finetuning sample."""
    plm = encoder_forward(enc, length)["total"]
    heads = 2 * enc.hidden + 2  # PLM head (H -> 1); the ID head is inside id_forward
    forward = plm + id_forward + heads
    return {"plm_forward": plm, "id_forward": id_forward, "forward": forward, "train": 3 * forward, "plm_share": plm / forward}


def describe(enc: EncoderShape) -> dict:
    return asdict(enc)
