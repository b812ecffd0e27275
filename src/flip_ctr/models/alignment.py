"""FLIP modality-alignment pretraining heads (paper §IV-C3 – §IV-C5, Eqs. 5-13).

Plain ``nn.Module`` s, no Lightning. Notation as in the paper: ``w`` / ``ŵ`` are the PLM's
last-layer token states for the original / masked text ``[B, L, D_text]``; ``v`` / ``v̂`` are
the ID model's representations of the original / masked tabular row ``[B, D_tab]``.

- :class:`MLMHead`  – joint reconstruction for masked language modeling (Eqs. 5-6).
- :class:`MTMHead`  – joint reconstruction for masked tabular modeling with NCE (Eqs. 7-10).
- :class:`ICLHead`  – instance-level contrastive learning, symmetric InfoNCE (Eqs. 11-13).

Where the paper is ambiguous or the authors' reference code departs from it, the head has a
named switch (``ICLHead.projection``; ``MTMHead.predictor_input``, ``noise_scope``,
``remove_accidental_hits``, ``nce``). The constructors default to this project's original
choices; the method's defaults live in ``conf/ablation/full.yaml`` / ``AlignmentConfig``.

The MLM and MTM losses are per-sample means over that sample's masked items, averaged over
the batch, i.e. the ``1/B Σ_i (L_i^MLM + L_i^MTM)`` of Eq. 14. Samples that happen to have
no masked item (e.g. a masked field whose value tokenizes to nothing) are left out of the
batch mean. When a batch has no masked item at all, the loss is a zero that still touches
every head parameter, so DDP sees no unused parameters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MLMHead",
    "MTMHead",
    "ICLHead",
    "ResidualLayerNormProjection",
    "per_sample_mean",
    "check_choice",
    "ICL_PROJECTIONS",
    "NOISE_SCOPES",
    "NCE_LOSSES",
    "MTM_INPUTS",
    "MLM_VOCABULARIES",
]

# The allowed values of the switches where the paper, its reference code and this project differ
# (each is documented where it is used and in conf/ablation/full.yaml).
ICL_PROJECTIONS = ("layernorm", "l2")
NOISE_SCOPES = ("global", "field")
NCE_LOSSES = ("corrected", "negative_sampling")
MTM_INPUTS = ("attended", "masked_and_attended")
MLM_VOCABULARIES = ("full", "text")

# Noise probabilities are floored here before their log is taken (a feature never drawn as noise,
# e.g. one unseen in training, would otherwise give log 0 = -inf in the NCE correction).
MIN_NOISE_PROB = 1e-10


def check_choice(key: str, value: object, allowed: Sequence[str]) -> None:
    """A ``ValueError`` naming ``key`` and the allowed values unless ``value`` is one of them."""
    if value not in allowed:
        raise ValueError(f"{key} must be one of {', '.join(repr(a) for a in allowed)}; got {value!r}")


def per_sample_mean(values: torch.Tensor, sample_index: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Mean over items of each sample, then mean over samples with ≥1 item (Eq. 6/10 → Eq. 14)."""
    sums = torch.zeros(batch_size, dtype=values.dtype, device=values.device).index_add_(0, sample_index, values)
    counts = torch.bincount(sample_index, minlength=batch_size).to(values.dtype)
    present = counts > 0
    return (sums[present] / counts[present]).mean()


def _zero_loss(module: nn.Module, *tensors: torch.Tensor) -> torch.Tensor:
    """A 0 connected to all parameters of ``module`` and to the inputs (keeps DDP happy)."""
    total = sum((p.sum() * 0.0 for p in module.parameters()), torch.zeros((), device=tensors[0].device))
    for t in tensors:
        if t.is_floating_point():
            total = total + t.sum() * 0.0
    return total


class MLMHead(nn.Module):
    """Joint reconstruction for MLM (paper Eqs. 5-6).

    ``q_{i,l} = g_PLM([ŵ_{i,l} ⊕ v_i])`` with ``g_PLM`` a two-layer MLP shaped like a BERT LM
    decoder (Linear → GELU → LayerNorm → Linear to the vocabulary), trained with cross-entropy
    against the original token at every masked position (Eq. 6). ``joint=False`` is the
    "w/o joint reconstruction" ablation: ``q_{i,l} = g_PLM(ŵ_{i,l})`` and ``v`` is ignored.

    ``output_token_ids`` (switch ``ablation.mlm_vocabulary``): ``None`` predicts over the PLM's
    whole vocabulary (the paper). Given the sorted ids of the tokens the dataset's text can
    contain (``text``: 5,372 of MiniLM's 30,522 for ML-1M), the softmax runs over those alone:
    the vocabulary projection, most of a frozen-PLM step's time, shrinks by that ratio, and
    only tokens that can never be a target leave the normaliser. Logits are then indexed by
    position in ``output_token_ids``; targets are mapped there (an id outside it is an error).
    """

    def __init__(
        self,
        text_dim: int,
        id_dim: int,
        vocab_size: int,
        joint: bool = True,
        hidden_dim: int | None = None,
        output_token_ids: torch.Tensor | None = None,
    ):
        super().__init__()
        self.joint = joint
        self.text_dim = text_dim
        self.id_dim = id_dim
        self.vocab_size = vocab_size
        hidden_dim = hidden_dim or text_dim
        in_dim = text_dim + id_dim if joint else text_dim
        self.transform = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.LayerNorm(hidden_dim))
        num_outputs = vocab_size
        self.output_index: torch.Tensor | None = None
        if output_token_ids is not None:
            ids = torch.as_tensor(output_token_ids, dtype=torch.long).flatten()
            if ids.numel() == 0 or (ids[1:] <= ids[:-1]).any() or ids[0] < 0 or ids[-1] >= vocab_size:
                raise ValueError(f"output_token_ids must be sorted, unique ids in [0, {vocab_size}); got {ids.numel()} ids")
            # vocabulary id → output index (-1: not an output); saved with the head.
            output_index = torch.full((vocab_size,), -1, dtype=torch.long)
            output_index[ids] = torch.arange(ids.numel())
            del self.output_index
            self.register_buffer("output_index", output_index)
            num_outputs = ids.numel()
        self.decoder = nn.Linear(hidden_dim, num_outputs)

    def forward(self, token_states: torch.Tensor, v: torch.Tensor | None = None) -> torch.Tensor:
        """Vocabulary logits for already-gathered positions: ``token_states`` [N, D_text],
        ``v`` [N, D_tab] (the row's tabular representation per position; unused if not joint)."""
        x = token_states
        if self.joint:
            if v is None:
                raise ValueError("joint MLMHead needs v")
            x = torch.cat([token_states, v.to(token_states.dtype)], dim=-1)
        return self.decoder(self.transform(x))

    def loss(
        self,
        masked_states: torch.Tensor,
        v: torch.Tensor,
        text_mask: torch.Tensor,
        target_ids: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, accuracy)`` over the masked positions only.

        ``masked_states`` [B, L, D_text] = ŵ (PLM states of the masked text), ``v`` [B, D_tab]
        (ID representation of the UNMASKED row), ``text_mask`` [B, L] bool (I^text),
        ``target_ids`` [B, L] original token ids. Positions are gathered before the decoder, so
        logits are ``[N_masked, V]``, never ``[B, L, V]``. Accuracy (detached) is top-1 over
        masked tokens.
        """
        bsz = masked_states.shape[0]
        sample_idx, pos_idx = text_mask.nonzero(as_tuple=True)
        if sample_idx.numel() == 0:
            zero = _zero_loss(self, masked_states, v)
            return zero, torch.zeros((), device=masked_states.device)
        states = masked_states[sample_idx, pos_idx]
        logits = self(states, v[sample_idx] if self.joint else None)
        targets = target_ids[sample_idx, pos_idx]
        if self.output_index is not None:
            targets = self.output_index[targets]
            if (targets < 0).any():
                raise ValueError("a masked token is outside output_token_ids (mlm_vocabulary=text needs every text token in it)")
        ce = F.cross_entropy(logits.float(), targets, reduction="none")
        loss = per_sample_mean(ce, sample_idx, bsz)
        accuracy = (logits.detach().argmax(dim=-1) == targets).float().mean()
        return loss, accuracy


class MTMHead(nn.Module):
    """Joint reconstruction for MTM with noise-contrastive estimation (paper Eqs. 7-10).

    1. Cross-attention (Eq. 7): ``u_i = softmax(v̂_i Q w_iᵀ / sqrt(D_text)) w_i`` with a
       trainable ``Q ∈ R^{D_tab × D_text}``, over the UNMASKED text states ``w_i``; padded
       positions (``attention_mask == 0``) get exactly zero weight.
    2. Per-field MLPs (Eq. 8): for each field ``f`` an independent two-layer MLP
       ``g_ID^(f)`` maps the predictor input to a hidden vector ``h_{i,f}``. The paper's M-way
       output layer is factorised as ``s_{i,f}(x) = h_{i,f} · E_out[x] + b[x]`` with an output
       feature-embedding table ``E_out [num_features, hidden_dim]``: only the rows of the
       true and noise features are ever gathered, never a softmax over all M features.
    3. NCE (Eq. 10): per masked ``(i, f)`` the true feature against ``K`` noise features drawn
       with ``torch.multinomial`` from the training-set feature frequencies, binary
       cross-entropy summed over the 1 + K candidates (true → 1, noise → 0), per-sample mean
       over masked fields, then batch mean.

    Switches (where the paper, the authors' reference code and this project differ):

    - ``predictor_input`` — what the per-field MLPs read. ``"attended"``: ``u`` alone, as the
      paper's Eq. 8 writes it. ``"masked_and_attended"``: ``[v̂ ; u]``, the reference's choice,
      which also gives the masked ID representation a direct path into the loss (with
      ``"attended"`` v̂ reaches the loss only through the attention query). ``joint=False``
      (the "w/o joint reconstruction" ablation) reads ``v̂`` alone whatever this says.
    - ``noise_scope`` — ``"global"``: noise drawn from all features at their training
      frequencies (the paper: "from the entire feature space"; also the reference).
      ``"field"``: noise for field ``f`` drawn only from field ``f``'s id range
      ``[field_offsets[f], field_offsets[f+1])`` at those features' frequencies (ours: global
      noise is easy to reject, a gender head can refuse a movie id on the field alone).
    - ``remove_accidental_hits`` — noise draws equal to the true feature (frequent in small
      fields such as gender) are dropped from the loss and the accuracy instead of being
      labelled 0 against themselves. ``None`` follows the scope: on for ``"field"`` (ours),
      off for ``"global"`` (the reference removes none).
    - ``nce`` — the binary classifier's logit. ``"negative_sampling"``: the raw score
      ``s(x)`` (word2vec-style negative sampling; ours). ``"corrected"``: true NCE as in the
      reference, ``s(x) − log M − log(K·q(x))``, where ``q`` is the distribution the noise is
      drawn from (the field's or the global one, after ``noise_power``), ``K = num_noise`` and
      ``log M`` (``M = num_features``) is a fixed normaliser, so ``s(x) − log M`` is the model's
      log-probability of ``x`` (self-normalised NCE). The output bias then starts at
      ``log q(x) + log M``: at initialisation the model's distribution equals the noise
      distribution and every candidate's corrected logit is ``−log K`` (probability
      ``1/(1+K)`` of being the true one, the prior), so the loss starts balanced instead of
      having to learn the frequencies first. (Without the ``− log M`` the corrected logits
      would start at ``log(M/K)``, ≈ +6.5 on ML-1M, and every noise term would be saturated.)

    The noise distribution never puts mass on the ``<MASK>`` id (it is id ``num_features``,
    outside the table) nor on ``exclude_ids`` (e.g. a padding id). ``noise_power`` raises
    frequencies to a power (1.0 = the paper's frequency distribution; 0.75 = word2vec style).
    A range whose frequencies are all zero falls back to uniform over its non-excluded ids.
    """

    def __init__(
        self,
        text_dim: int,
        id_dim: int,
        feature_frequencies: torch.Tensor,
        field_offsets: Sequence[int],
        hidden_dim: int = 128,
        num_noise: int = 25,
        joint: bool = True,
        noise_scope: str = "field",
        noise_power: float = 1.0,
        exclude_ids: Sequence[int] = (),
        remove_accidental_hits: bool | None = None,
        nce: str = "negative_sampling",
        predictor_input: str = "attended",
    ):
        super().__init__()
        offsets = [int(o) for o in field_offsets]
        if len(offsets) < 2 or offsets[0] != 0 or any(b <= a for a, b in zip(offsets, offsets[1:])):
            raise ValueError(f"field_offsets must start at 0 and strictly increase, got {offsets}")
        freqs = _checked_frequencies(feature_frequencies, offsets[-1])
        check_choice("noise_scope", noise_scope, NOISE_SCOPES)
        check_choice("nce", nce, NCE_LOSSES)
        check_choice("predictor_input", predictor_input, MTM_INPUTS)
        if num_noise < 1:
            raise ValueError(f"num_noise must be >= 1, got {num_noise}")

        self.text_dim, self.id_dim, self.hidden_dim = text_dim, id_dim, hidden_dim
        self.num_fields = len(offsets) - 1
        self.num_features = num_features = offsets[-1]
        self.field_offsets = offsets
        self.num_noise = num_noise
        self.joint = joint
        self.noise_scope = noise_scope
        self.remove_accidental_hits = noise_scope == "field" if remove_accidental_hits is None else bool(remove_accidental_hits)
        self.nce = nce
        self.predictor_input = predictor_input
        # The fixed normaliser log M of corrected NCE (see the class docstring).
        self.log_normaliser = math.log(num_features)

        # Eq. 7 cross-attention matrix.
        self.query = nn.Parameter(torch.empty(id_dim, text_dim))
        nn.init.xavier_uniform_(self.query)
        # Eq. 8: F independent 2-layer MLPs, stored stacked (einsum over all fields at once).
        in_dim = self._predictor_dim()
        self.mlp_w1 = nn.Parameter(torch.empty(self.num_fields, in_dim, hidden_dim))
        self.mlp_b1 = nn.Parameter(torch.zeros(self.num_fields, hidden_dim))
        self.mlp_w2 = nn.Parameter(torch.empty(self.num_fields, hidden_dim, hidden_dim))
        self.mlp_b2 = nn.Parameter(torch.zeros(self.num_fields, hidden_dim))
        for w in (self.mlp_w1, self.mlp_w2):
            bound = 1.0 / math.sqrt(w.shape[1])
            nn.init.uniform_(w, -bound, bound)

        # Noise weights: unnormalised, zero on excluded ids; multinomial normalises per range.
        weights = self._noise_weights(freqs, noise_power, exclude_ids)
        self.register_buffer("noise_weights", weights.float(), persistent=False)
        log_q = self._log_noise_probabilities(weights)
        self.register_buffer("noise_log_prob", log_q.float(), persistent=False)

        # Output layer rows (M-way layer of Eq. 8, factorised).
        self.output_embedding = nn.Embedding(num_features, hidden_dim)
        nn.init.normal_(self.output_embedding.weight, std=1.0 / math.sqrt(hidden_dim))
        initial_bias = log_q.float() + self.log_normaliser if nce == "corrected" else torch.zeros(num_features)
        self.output_bias = nn.Parameter(initial_bias)

    # ------------------------------------------------------------------ construction
    def _predictor_dim(self) -> int:
        if not self.joint:
            return self.id_dim
        return self.text_dim if self.predictor_input == "attended" else self.id_dim + self.text_dim

    def _noise_ranges(self) -> list[tuple[int, int]]:
        """The id ranges noise is drawn from, each normalised on its own."""
        if self.noise_scope == "global":
            return [(0, self.num_features)]
        return list(zip(self.field_offsets[:-1], self.field_offsets[1:]))

    def _noise_weights(self, freqs: torch.Tensor, noise_power: float, exclude_ids: Sequence[int]) -> torch.Tensor:
        weights = freqs.pow(noise_power) if noise_power != 1.0 else freqs.clone()
        weights[freqs <= 0] = 0.0  # never seen in training: not noise at any power (0 ** 0 would be 1)
        excluded = torch.zeros(self.num_features, dtype=torch.bool)
        for i in exclude_ids:
            if 0 <= int(i) < self.num_features:
                excluded[int(i)] = True
        weights[excluded] = 0.0
        for start, end in self._noise_ranges():
            if weights[start:end].sum() <= 0:
                fallback = (~excluded[start:end]).double()
                if fallback.sum() <= 0:
                    raise ValueError(f"feature range [{start}, {end}) has no feature left to sample noise from")
                weights[start:end] = fallback
        return weights

    def _log_noise_probabilities(self, weights: torch.Tensor) -> torch.Tensor:
        """``log q(x)``: each feature's probability under the distribution its noise comes from."""
        q = torch.empty_like(weights)
        for start, end in self._noise_ranges():
            q[start:end] = weights[start:end] / weights[start:end].sum()
        return q.clamp(min=MIN_NOISE_PROB).log()

    # ------------------------------------------------------------------ pieces
    def attend(self, v_hat: torch.Tensor, text_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Eq. 7: ``u = softmax(v̂ Q wᵀ / sqrt(D_text)) w`` → [B, D_text]; padding gets weight 0."""
        keep = attention_mask.to(torch.bool)
        w = text_states.masked_fill(~keep.unsqueeze(-1), 0.0)  # padded states cannot leak in
        query = v_hat.to(self.query.dtype) @ self.query  # [B, D_text]
        scores = torch.einsum("bd,bld->bl", query.to(w.dtype), w).float() / math.sqrt(self.text_dim)
        scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
        attn = torch.softmax(scores, dim=-1)
        return torch.einsum("bl,bld->bd", attn.to(w.dtype), w)

    def predictor_input_of(self, v_hat: torch.Tensor, text_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """What the per-field MLPs read: ``u`` or ``[v̂ ; u]`` (``predictor_input``), or ``v̂`` when not joint."""
        if not self.joint:
            return v_hat
        u = self.attend(v_hat, text_states, attention_mask)
        if self.predictor_input == "attended":
            return u
        return torch.cat([v_hat.to(u.dtype), u], dim=-1)

    def field_hidden(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. 8 MLPs for every field at once: ``x`` [B, in] → ``h`` [B, F, hidden]."""
        h = torch.einsum("bi,fih->bfh", x, self.mlp_w1.to(x.dtype)) + self.mlp_b1.to(x.dtype)
        h = F.relu(h)
        return torch.einsum("bfi,fih->bfh", h, self.mlp_w2.to(h.dtype)) + self.mlp_b2.to(h.dtype)

    def sample_noise(
        self, field_index: torch.Tensor, num_noise: int | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``K`` noise feature ids per entry of ``field_index`` [N] → LongTensor [N, K].

        Drawn with replacement with ``torch.multinomial`` from the frequency distribution of
        the entry's field (``noise_scope="field"``) or of all features (``"global"``).
        """
        k = num_noise or self.num_noise
        n = field_index.numel()
        if generator is not None and generator.device.type != self.noise_weights.device.type:
            raise ValueError(
                f"noise generator is on {generator.device} but the noise table is on {self.noise_weights.device}; "
                "pass a generator created on the module's device (or None)"
            )
        out = torch.empty(n, k, dtype=torch.long, device=self.noise_weights.device)
        if n == 0:
            return out
        if self.noise_scope == "global":
            return torch.multinomial(self.noise_weights, n * k, replacement=True, generator=generator).view(n, k)
        field_index = field_index.to(out.device)
        for f in torch.unique(field_index).tolist():
            rows = (field_index == f).nonzero(as_tuple=True)[0]
            start, end = self.field_offsets[f], self.field_offsets[f + 1]
            draws = torch.multinomial(self.noise_weights[start:end], rows.numel() * k, replacement=True, generator=generator)
            out[rows] = draws.view(rows.numel(), k) + start
        return out

    def classifier_logits(self, scores: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """The logits of "is this candidate the true feature?" from the model's scores ``s(x)``:
        ``s(x)`` for negative sampling, ``s(x) − log M − log(K·q(x))`` for corrected NCE."""
        if self.nce == "negative_sampling":
            return scores
        num_noise = candidates.shape[1] - 1
        return scores - self.log_normaliser - math.log(num_noise) - self.noise_log_prob[candidates]

    # ------------------------------------------------------------------ loss
    def loss(
        self,
        masked_v: torch.Tensor,
        text_states: torch.Tensor,
        attention_mask: torch.Tensor,
        masked_fields: torch.Tensor,
        target_feature_ids: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, accuracy)`` of Eq. 10.

        ``masked_v`` [B, D_tab] = v̂ (ID representation of the MASKED row), ``text_states``
        [B, L, D_text] = w (PLM states of the UNMASKED text), ``attention_mask`` [B, L],
        ``masked_fields`` [B, F] bool (I^tab), ``target_feature_ids`` [B, F] the original
        feature ids. Accuracy (detached): fraction of masked (i, f) whose true feature's score
        ``s(x)`` is strictly above those of all its K noise features.
        """
        bsz = masked_v.shape[0]
        sample_idx, field_idx = masked_fields.nonzero(as_tuple=True)
        if sample_idx.numel() == 0:
            zero = _zero_loss(self, masked_v, text_states)
            return zero, torch.zeros((), device=masked_v.device)
        h_all = self.field_hidden(self.predictor_input_of(masked_v, text_states, attention_mask))  # [B, F, hidden]
        h = h_all[sample_idx, field_idx]  # [N, hidden]
        positives = target_feature_ids[sample_idx, field_idx].long()  # [N]
        if ((positives < 0) | (positives >= self.num_features)).any():
            raise ValueError("target_feature_ids contain ids outside [0, num_features) (a <MASK> id as target?)")
        noise = self.sample_noise(field_idx, generator=generator).to(positives.device)  # [N, K]
        candidates = torch.cat([positives.unsqueeze(1), noise], dim=1)  # [N, 1+K]
        emb = self.output_embedding(candidates)  # [N, 1+K, hidden]
        scores = torch.einsum("nh,nkh->nk", h.to(emb.dtype), emb).float() + self.output_bias[candidates].float()
        logits = self.classifier_logits(scores, candidates)
        valid = torch.ones_like(noise, dtype=torch.bool)
        if self.remove_accidental_hits:
            valid = noise != positives.unsqueeze(1)
        # BCE summed over the candidates: the true one labelled 1, the (valid) noise ones 0.
        noise_term = (F.logsigmoid(-logits[:, 1:]) * valid).sum(dim=1)
        per_pair = -(F.logsigmoid(logits[:, 0]) + noise_term)
        loss = per_sample_mean(per_pair, sample_idx, bsz)
        with torch.no_grad():
            best_noise = scores[:, 1:].masked_fill(~valid, float("-inf")).max(dim=1).values
            accuracy = (scores[:, 0] > best_noise).float().mean()
        return loss, accuracy

    forward = loss


def _checked_frequencies(feature_frequencies: torch.Tensor, num_features: int) -> torch.Tensor:
    freqs = torch.as_tensor(feature_frequencies, dtype=torch.float64).flatten()
    if freqs.numel() != num_features:
        raise ValueError(
            f"feature_frequencies has {freqs.numel()} entries but field_offsets[-1] = {num_features} "
            "(one count per real feature; the <MASK> id must not be included)"
        )
    if (freqs < 0).any() or not torch.isfinite(freqs).all():
        raise ValueError("feature_frequencies must be finite and non-negative")
    return freqs


class ResidualLayerNormProjection(nn.Module):
    """The reference's ICL projection head: ``LayerNorm(p + dropout(Linear(GELU(p))))`` with
    ``p = Linear(x)``. Not L2-normalised, so dot products (and the ICL logits) are unbounded."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.2):
        super().__init__()
        self.projection = nn.Linear(in_dim, out_dim)
        self.fc = nn.Linear(out_dim, out_dim)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        projected = self.projection(x)
        return self.norm(projected + self.dropout(self.fc(F.gelu(projected))))


class ICLHead(nn.Module):
    """Instance-level contrastive learning (paper Eqs. 11-13).

    ``z_text = norm(proj_text(w_{i,1}))``, ``z_tab = norm(proj_tab(v_i))`` in ``d = 128``
    dimensions, then ½ (InfoNCE text→tab + InfoNCE tab→text) with temperature τ (default 0.7)
    and dot-product similarity. The paper's "linear layers + normalization" is read in two
    ways (``projection``):

    - ``"l2"`` (ours): one Linear per tower, L2-normalised, so the similarity is a cosine and
      the logits are bounded by ±1/τ (±1.43 at τ = 0.7).
    - ``"layernorm"`` (the reference): :class:`ResidualLayerNormProjection` per tower
      (Linear → GELU → Linear → dropout → residual → LayerNorm), no L2 normalisation: a
      LayerNorm output of dimension d has norm ≈ √d, so logits are O(d/τ), far sharper.

    Distributed: when ``torch.distributed`` is initialised with world size > 1, both
    projections are all-gathered from every process with an autograd-aware all-gather
    (:class:`_AllGatherWithGrad`: gradients from every rank's loss flow back to each rank's own
    shard), so the negatives come from the global batch; the local rows' labels are offset by
    the number of rows on lower ranks. Unequal per-rank batch sizes are handled by padding.
    Each rank's loss is the mean over its own rows; DDP's gradient averaging then yields the
    global-batch InfoNCE.
    """

    def __init__(
        self,
        text_dim: int,
        id_dim: int,
        proj_dim: int = 128,
        temperature: float = 0.7,
        projection: str = "l2",
        dropout: float = 0.2,
        gather_distributed: bool = True,
    ):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        check_choice("projection", projection, ICL_PROJECTIONS)
        self.projection = projection
        self.text_proj = self._tower(text_dim, proj_dim, dropout)
        self.tab_proj = self._tower(id_dim, proj_dim, dropout)
        self.temperature = float(temperature)
        self.gather_distributed = gather_distributed

    def _tower(self, in_dim: int, proj_dim: int, dropout: float) -> nn.Module:
        if self.projection == "layernorm":
            return ResidualLayerNormProjection(in_dim, proj_dim, dropout)
        return nn.Linear(in_dim, proj_dim)

    def project(self, cls_state: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z_text, z_tab)``, each [B, proj_dim] (L2-normalised for ``projection="l2"``)."""
        z_text = self.text_proj(cls_state.to(_parameter_dtype(self.text_proj))).float()
        z_tab = self.tab_proj(v.to(_parameter_dtype(self.tab_proj))).float()
        if self.projection == "l2":
            z_text = F.normalize(z_text, dim=-1)
            z_tab = F.normalize(z_tab, dim=-1)
        return z_text, z_tab

    def forward(self, cls_state: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Symmetric InfoNCE (Eq. 13) between the [CLS] states [B, D_text] and v [B, D_tab]."""
        z_text, z_tab = self.project(cls_state, v)
        all_text, all_tab, offset = z_text, z_tab, 0
        if self.gather_distributed and _world_size() > 1:
            all_text, all_tab, offset = _gather_with_grad(z_text, z_tab)
        labels = torch.arange(z_text.shape[0], device=z_text.device) + offset
        logits_t2t = z_text @ all_tab.t() / self.temperature  # text_i vs every tab_j (Eq. 11)
        logits_tab2t = z_tab @ all_text.t() / self.temperature  # tab_i vs every text_j (Eq. 12)
        return 0.5 * (F.cross_entropy(logits_t2t, labels) + F.cross_entropy(logits_tab2t, labels))


def _parameter_dtype(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather equal-shaped tensors; backward sums every rank's gradient for this rank's shard.

    The standard trick (SimCLR/CLIP "GatherLayer"): forward = ``dist.all_gather``; backward =
    ``all_reduce(SUM)`` of the stacked output gradients, keeping this rank's slice. Written with
    the public collectives because ``torch.distributed.nn.functional.all_gather`` is deprecated.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> tuple[torch.Tensor, ...]:
        import torch.distributed as dist

        ctx.rank = dist.get_rank()
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return tuple(parts)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        stacked = torch.stack([g.contiguous() for g in grads])
        dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
        return stacked[ctx.rank]


def _gather_with_grad(*tensors: torch.Tensor) -> tuple:
    """All-gather [B_r, d] tensors from every rank with autograd; returns (*gathered, row offset).

    Per-rank row counts may differ (last batch): they are exchanged first and rows padded.
    """
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    local = tensors[0].shape[0]
    size = torch.tensor([local], device=tensors[0].device, dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes_list = [int(s.item()) for s in sizes]
    max_size = max(sizes_list)
    gathered = []
    for t in tensors:
        padded = F.pad(t, (0, 0, 0, max_size - local)) if local < max_size else t
        parts = _AllGatherWithGrad.apply(padded)
        gathered.append(torch.cat([p[:n] for p, n in zip(parts, sizes_list)], dim=0))
    return (*gathered, sum(sizes_list[:rank]))
