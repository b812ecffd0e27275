"""Stage 1: modality alignment pretraining (paper §IV-C, Eq. 4-14).

Per step: field-level masks for text and tabular (independent, fresh each step, Eq. 4),
encode ``w = PLM(x_text)``, ``ŵ = PLM(masked text)``, ``v = ID(x_tab)``, ``v̂ = ID(masked tab)``,
then ``loss = mean_i(MLM_i + MTM_i) + ICL`` (Eq. 14). Every term can be switched off for the
ablations of Table VII; a switched-off term is neither computed nor logged.

When both ``w`` and ``ŵ`` are needed the PLM runs once on the stacked [text; masked text]
batch: the same FLOPs as two calls, but one kernel launch sequence and better GPU utilisation.
With a frozen PLM and ``text_encoding="per_field"`` (a deviation, for CPU budgets) no PLM runs
per step at all: ``w`` and ``ŵ`` are assembled from each field sentence's states, encoded once
(:mod:`flip_ctr.models.field_text_states`).

At the end of fitting, the aligned ID model and PLM are saved separately
(:mod:`flip_ctr.stages.checkpoints`) so that each finetuning strategy loads only what it needs.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import torch
from torch import nn

from flip_ctr.data import masking
from flip_ctr.models.alignment import (
    ICL_PROJECTIONS,
    MLM_VOCABULARIES,
    MTM_INPUTS,
    NCE_LOSSES,
    NOISE_SCOPES,
    ICLHead,
    MLMHead,
    MTMHead,
    check_choice,
)
from flip_ctr.models.field_text_states import TEXT_ENCODINGS, FieldTextStates, per_field_encoding_problem
from flip_ctr.stages.checkpoints import HEADS_FILE, save_aligned, save_heads
from flip_ctr.stages.lazy_adam import LazyAdam, use_sparse_embedding_gradients

log = logging.getLogger(__name__)


@dataclass
class AlignmentConfig:
    """The switches of Table VII, the hyperparameters of §V-A and the switches where the paper,
    the authors' reference code and this project differ (all sweepable by Hydra). The defaults
    are the method's (``conf/ablation/full.yaml`` documents each value); the heads' own
    docstrings say what each switch computes."""

    use_mlm: bool = True
    use_mtm: bool = True
    use_icl: bool = True
    joint_reconstruction: bool = True  # False: MLM from ŵ alone, MTM from v̂ alone
    field_level_masking: bool = True  # False: random token-level text masking
    text_mask_ratio: float = 0.15
    tab_mask_ratio: float = 0.15
    temperature: float = 0.7
    icl_dim: int = 128
    num_noise: int = 25
    head_hidden_dim: int = 256
    icl_projection: str = "layernorm"  # or "l2": Linear + L2 normalisation (cosine / τ)
    noise_scope: str = "global"  # or "field": noise from the masked field's own ids
    remove_accidental_hits: bool | None = None  # None: on for noise_scope=field, off for global
    nce: str = "corrected"  # or "negative_sampling": plain logsigmoid of the raw scores
    mtm_input: str = "masked_and_attended"  # or "attended": the MTM predictor reads u alone
    mlm_vocabulary: str = "full"  # or "text": the MLM softmax over the tokens the dataset's text contains

    def __post_init__(self) -> None:
        check_choice("icl_projection", self.icl_projection, ICL_PROJECTIONS)
        check_choice("noise_scope", self.noise_scope, NOISE_SCOPES)
        check_choice("nce", self.nce, NCE_LOSSES)
        check_choice("mtm_input", self.mtm_input, MTM_INPUTS)
        check_choice("mlm_vocabulary", self.mlm_vocabulary, MLM_VOCABULARIES)
        check_choice("remove_accidental_hits", self.remove_accidental_hits, (None, True, False))


class AlignmentPretrainModule(L.LightningModule):
    def __init__(
        self,
        id_model: nn.Module,
        plm: nn.Module,
        feature_frequencies: torch.Tensor,
        field_offsets: list[int],
        alignment: AlignmentConfig | dict | None = None,
        lr: float = 5e-5,
        id_lr: float | None = None,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.0,
        seed: int = 0,
        save_dir: str | None = None,
        id_model_spec: dict | None = None,
        freeze_plm: bool = False,
        text_encoding: str = "row",
        text_pieces=None,
        optimizer: str = "adamw",
    ) -> None:
        super().__init__()
        check_choice("text_encoding", text_encoding, TEXT_ENCODINGS)
        if optimizer not in ("adamw", "lazy_adamw"):
            raise ValueError(
                f"stage.optimizer for pretraining must be 'adamw' (the paper's and the reference's) or 'lazy_adamw' "
                f"(only the batch's rows of the feature tables update), got {optimizer!r}"
            )
        cfg = alignment if isinstance(alignment, AlignmentConfig) else AlignmentConfig(**(alignment or {}))
        if not (cfg.use_mlm or cfg.use_mtm or cfg.use_icl):
            raise ValueError("alignment pretraining with MLM, MTM and ICL all disabled: use ablation=no_pretrain instead")
        self.cfg = cfg
        self.id_model = id_model
        self.plm = plm
        self.lr, self.weight_decay, self.warmup_ratio = lr, weight_decay, warmup_ratio
        # The paper uses one lr (5e-5) for 30 epochs; short CPU-scale runs give the ID model
        # and heads (randomly initialised, unlike the PLM) their own, larger lr.
        self.id_lr = id_lr
        self.seed = seed
        self.save_dir = save_dir
        self.id_model_spec = id_model_spec or {}
        # A frozen PLM (a reduced-compute option, not the paper's protocol) runs forward-only:
        # no activations kept, no PLM backward or optimizer state, ~3x cheaper per step. The ID
        # model and heads still align to its states; the saved PLM is the unchanged one.
        self.freeze_plm = freeze_plm
        if freeze_plm:
            plm.requires_grad_(False)
        # per_field: the PLM's states of each field sentence alone, computed once (module docstring).
        self.text_encoding = text_encoding
        self.text_pieces = text_pieces
        self._field_states: FieldTextStates | None = None
        if text_encoding == "per_field":
            problem = per_field_encoding_problem(
                freeze_plm, cfg.use_mlm, cfg.field_level_masking, use_icl=cfg.use_icl, pooling=getattr(plm, "pooling", "mean")
            )
            if problem or text_pieces is None:
                raise ValueError(problem or "text_encoding=per_field needs the datamodule's text pieces (text_pieces=datamodule.text)")
        self.num_fields = id_model.num_fields
        d_tab, d_text = id_model.representation_dim, plm.hidden_size
        if cfg.use_mlm:
            if cfg.mlm_vocabulary == "text" and text_pieces is None:
                raise ValueError("ablation.mlm_vocabulary=text needs the datamodule's text pieces (text_pieces=datamodule.text)")
            self.mlm = MLMHead(
                text_dim=d_text,
                id_dim=d_tab,
                vocab_size=plm.vocab_size,
                hidden_dim=cfg.head_hidden_dim,
                joint=cfg.joint_reconstruction,
                output_token_ids=text_pieces.token_ids() if cfg.mlm_vocabulary == "text" else None,
            )
        if cfg.use_mtm:
            self.mtm = MTMHead(
                text_dim=d_text,
                id_dim=d_tab,
                feature_frequencies=feature_frequencies,
                field_offsets=field_offsets,
                hidden_dim=cfg.head_hidden_dim,
                num_noise=cfg.num_noise,
                joint=cfg.joint_reconstruction,
                noise_scope=cfg.noise_scope,
                remove_accidental_hits=cfg.remove_accidental_hits,
                nce=cfg.nce,
                predictor_input=cfg.mtm_input,
            )
        if cfg.use_icl:
            self.icl = ICLHead(
                text_dim=d_text, id_dim=d_tab, proj_dim=cfg.icl_dim, temperature=cfg.temperature, projection=cfg.icl_projection
            )
        # lazy_adamw: the ID model's feature tables and MTM's output table get sparse gradients,
        # and only the rows of the batch update (flip_ctr.stages.lazy_adam): with millions of
        # features, dense AdamW's gradient and two moments of the MTM table alone are 12 GiB.
        self.optimizer = optimizer
        if optimizer == "lazy_adamw":
            use_sparse_embedding_gradients(id_model)
            if cfg.use_mtm:
                self.mtm.output_embedding.sparse = True
        self.save_hyperparameters(ignore=["id_model", "plm", "feature_frequencies", "text_pieces"])

    # -- masking -----------------------------------------------------------------------------
    def _generator(self, device: torch.device) -> torch.Generator:
        """Fresh masks every step, yet a pure function of (seed, step, rank): resumable and testable."""
        g = torch.Generator(device=device)
        g.manual_seed(hash((self.seed, self.global_step, self.global_rank)) % (2**62))
        return g

    def make_masks(self, batch: dict, generator: torch.Generator) -> dict:
        B = batch["feature_ids"].shape[0]
        out = {}
        if self.cfg.use_mlm:
            if self.cfg.field_level_masking:
                fields = masking.choose_masked_fields(B, self.num_fields, self.cfg.text_mask_ratio, generator)
                text_mask = masking.field_level_text_mask(batch["token_field_ids"], batch["value_token_mask"], fields)
                out["text_fields"] = fields
            else:
                text_mask = masking.token_level_text_mask(
                    batch["attention_mask"], batch["token_field_ids"], self.cfg.text_mask_ratio, generator
                )
            out["text_mask"] = text_mask
            out["masked_input_ids"] = masking.mask_text(batch["input_ids"], text_mask, self.plm.mask_token_id)
        if self.cfg.use_mtm:
            fields = masking.choose_masked_fields(B, self.num_fields, self.cfg.tab_mask_ratio, generator)
            out["tab_fields"] = fields
            out["masked_feature_ids"] = masking.mask_tabular(batch["feature_ids"], fields, self.id_model.mask_feature_id)
        return out

    # -- the objective -------------------------------------------------------------------------
    def field_states(self) -> FieldTextStates:
        """The per-field states, built on first use on the PLM's current device."""
        device = next(self.plm.parameters()).device
        if self._field_states is None or self._field_states.cls_state.device != device:
            self._field_states = FieldTextStates(self.text_pieces, self.plm)
        return self._field_states

    def encode_text(self, batch: dict, masks: dict) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(w, ŵ): the PLM runs once over whatever of [text; masked text] is needed (or, per
        field, both are assembled from the precomputed sentence states)."""
        need_plain = self.cfg.use_icl or self.cfg.use_mtm
        need_masked = self.cfg.use_mlm
        if self.text_encoding == "per_field":
            states = self.field_states()
            w = states.assemble(batch["text_value_ids"]) if need_plain else None
            w_masked = states.assemble(batch["text_value_ids"], masks["text_fields"]) if need_masked else None
            return w, w_masked
        inputs = ([batch["input_ids"]] if need_plain else []) + ([masks["masked_input_ids"]] if need_masked else [])
        attention = batch["attention_mask"].repeat(len(inputs), 1)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_plm):
            states = self.plm(torch.cat(inputs), attention)
        if need_plain and need_masked:
            return states.chunk(2)
        return (states, None) if need_plain else (None, states)

    def compute_losses(self, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        masks = self.make_masks(batch, generator)
        w, w_masked = self.encode_text(batch, masks)
        v = self.id_model(batch["feature_ids"])[0] if (self.cfg.use_mlm or self.cfg.use_icl) else None
        out: dict[str, torch.Tensor] = {}
        if self.cfg.use_mlm:
            out["mlm"], out["mlm_acc"] = self.mlm.loss(w_masked, v, masks["text_mask"], batch["input_ids"])
        if self.cfg.use_mtm:
            v_masked = self.id_model(masks["masked_feature_ids"])[0]
            out["mtm"], out["mtm_acc"] = self.mtm.loss(
                v_masked, w, batch["attention_mask"], masks["tab_fields"], batch["feature_ids"], generator=generator
            )
        if self.cfg.use_icl:
            out["icl"] = self.icl(self.plm.sentence_embedding(w, batch["attention_mask"]), v)
        # Eq. 14: per-sample reconstruction terms are already batch means; ICL is added once.
        out["loss"] = sum(out[k] for k in ("mlm", "mtm", "icl") if k in out)
        return out

    def on_train_epoch_start(self) -> None:
        if self.freeze_plm:
            self.plm.eval()  # a frozen encoder is a fixed target: no dropout noise

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        losses = self.compute_losses(batch, self._generator(batch["feature_ids"].device))
        self.log_dict({f"pretrain/{k}": v.detach() for k, v in losses.items()}, prog_bar=True)
        return losses["loss"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        g = torch.Generator(device=batch["feature_ids"].device)
        g.manual_seed(self.seed + batch_idx)  # the same masks every epoch: comparable curves
        losses = self.compute_losses(batch, g)
        self.log_dict({f"pretrain_val/{k}": v for k, v in losses.items()}, sync_dist=True)

    def configure_optimizers(self):
        """AdamW with cosine decay (paper §V-A4); optional linear warm-up. ``lazy_adamw``: the same
        groups, learning rates and decoupled decay, with lazy rows for the sparse tables."""
        groups: dict[tuple[bool, bool], list] = {}
        for name, p in self.named_parameters():
            if p.requires_grad:
                is_plm = name.startswith("plm.")
                no_decay = p.ndim < 2 or "LayerNorm" in name or "norm" in name
                groups.setdefault((is_plm, no_decay), []).append(p)
        other_lr = self.id_lr if self.id_lr is not None else self.lr
        optimizer_cls = LazyAdam if self.optimizer == "lazy_adamw" else torch.optim.AdamW
        optimizer = optimizer_cls(
            [
                {"params": params, "lr": self.lr if is_plm else other_lr, "weight_decay": 0.0 if no_decay else self.weight_decay}
                for (is_plm, no_decay), params in groups.items()
            ]
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(total * self.warmup_ratio)

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + torch.cos(torch.tensor(progress * torch.pi)).item())

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_fit_end(self) -> None:
        if self.save_dir and self.trainer.is_global_zero:
            save_aligned(Path(self.save_dir), self.id_model, self.id_model_spec, self.plm)
            heads = {name: getattr(self, name) for name in ("mlm", "mtm", "icl") if hasattr(self, name)}
            save_heads(Path(self.save_dir) / HEADS_FILE, heads, asdict(self.cfg))
            log.info("aligned ID model and PLM saved to %s", self.save_dir)
