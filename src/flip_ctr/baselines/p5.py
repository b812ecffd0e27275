"""P5 (Geng et al., 2022) for a single task, CTR prediction, as in the paper's Table II.

Text-to-text with a T5 encoder-decoder: the row becomes a prompt built from one of several
templates (user-side and item-side "<field> is <value>." sentences filled into the template's
``{user}`` / ``{item}`` slots), and the target text is "yes" (click) or "no".

- Training: one template drawn uniformly at random per row and step; ``loss="lm"`` (default,
  P5's objective) is the usual sequence-to-sequence cross-entropy over the vocabulary on the
  target tokens (the word, then EOS); ``loss="bce"`` trains the click logit below directly.
- Click probability: at the first decoder step the two target words' logits ``(s_yes, s_no)``
  give ``P(click) = softmax(s_yes, s_no)[yes] = sigmoid(s_yes - s_no)``; the stage's logit is
  ``s_yes - s_no``. ``eval_template`` picks the template used for validation/test (an index),
  or ``"mean"``: the mean of that logit over all templates.

Backbone: ``cfg.plm`` (``conf/baseline/p5.yaml`` sets it to T5-small): ``name_or_path`` is a
Hugging Face hub name or a local ``save_pretrained`` directory (the weights need a network or a
local copy); ``random_init`` (a dict of ``T5Config`` overrides) builds a randomly initialised T5
instead, with the vocabulary of ``tokenizer`` (e.g. MiniLM's WordPiece: works offline).

Prompts are assembled from pre-tokenized pieces (every distinct field value tokenized once,
as in :mod:`flip_ctr.data.text`); the row's per-field value indices come from the artifact by
``row_ids``, so the stage needs no text from the datamodule (``needs_text: false``).
"""

from __future__ import annotations

import logging
import re

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from flip_ctr.baselines.common import fields_of_side
from flip_ctr.stages.ctr import CTRStage

log = logging.getLogger(__name__)

DEFAULT_TEMPLATES = (
    "Will the user like the item? User: {user} Item: {item} Answer yes or no.",
    "{user} {item} Would this user enjoy this item, yes or no?",
    "Predict whether the user will click on the item. The user: {user} The item: {item}",
)
_SLOT = re.compile(r"\{(user|item)\}")


def single_token_id(tokenizer, word: str) -> int:
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"P5 target word {word!r} is {len(ids)} tokens for this tokenizer ({ids}); it must be one token")
    return int(ids[0])


class PromptBuilder:
    """Templates × pre-tokenized field sentences → encoder input ids (dynamic padding, EOS last)."""

    def __init__(
        self,
        field_names: list[str],
        values: list[list[str]],
        user_fields: list[int],
        item_fields: list[int],
        tokenizer,
        templates=DEFAULT_TEMPLATES,
        max_length: int = 256,
        max_value_tokens: int = 32,
    ) -> None:
        if not templates:
            raise ValueError("P5 needs at least one prompt template")
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        self.eos_id = None if eos is None else int(eos)
        self.max_length = int(max_length)
        self.pieces = [self._field_pieces(name, vals, tokenizer, max_value_tokens) for name, vals in zip(field_names, values)]
        slots = {"user": list(user_fields), "item": list(item_fields)}
        self.templates: list[list[tuple[str, object]]] = []
        for template in templates:
            parts: list[tuple[str, object]] = []
            for k, chunk in enumerate(_SLOT.split(template)):
                if k % 2:  # a slot name
                    parts.append(("fields", slots[chunk]))
                elif chunk.strip():
                    ids = tokenizer(chunk.strip(), add_special_tokens=False)["input_ids"]
                    parts.append(("text", torch.tensor(ids, dtype=torch.long)))
            if not any(kind == "fields" for kind, _ in parts):
                raise ValueError(f"P5 template {template!r} has neither a {{user}} nor an {{item}} slot")
            self.templates.append(parts)

    @property
    def num_templates(self) -> int:
        return len(self.templates)

    def _field_pieces(self, name: str, values: list[str], tokenizer, max_value_tokens: int):
        prefix = tokenizer(f"{name} is", add_special_tokens=False)["input_ids"]
        suffix = tokenizer(".", add_special_tokens=False)["input_ids"]
        value_ids = tokenizer([str(v) for v in values], add_special_tokens=False)["input_ids"]
        rows = [prefix + ids[:max_value_tokens] + suffix for ids in value_ids]
        width = max((len(r) for r in rows), default=1)
        tokens = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        for i, r in enumerate(rows):
            tokens[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        return tokens, torch.tensor([len(r) for r in rows], dtype=torch.long)

    def _assemble_one(self, local: torch.Tensor, template: int) -> tuple[torch.Tensor, torch.Tensor]:
        batch_size = local.shape[0]
        tokens, valid = [], []
        for kind, value in self.templates[template]:
            if kind == "text":
                tokens.append(value.expand(batch_size, -1))
                valid.append(torch.ones(batch_size, value.numel(), dtype=torch.bool))
                continue
            for f in value:
                table, lengths = self.pieces[f]
                idx = local[:, f].long()
                tokens.append(table[idx])
                valid.append(torch.arange(table.shape[1])[None, :] < lengths[idx, None])
        tokens, valid = torch.cat(tokens, 1), torch.cat(valid, 1)
        limit = self.max_length - (1 if self.eos_id is not None else 0)
        target = torch.cumsum(valid.long(), 1) - 1
        keep = valid & (target < limit)
        body = keep.sum(1)
        length = int(body.max()) + (1 if self.eos_id is not None else 0)
        rows = torch.arange(batch_size)[:, None].expand_as(tokens)
        out = torch.full((batch_size, max(length, 1)), self.pad_id, dtype=torch.long)
        out[rows[keep], target[keep]] = tokens[keep]
        if self.eos_id is not None:
            out[torch.arange(batch_size), body] = self.eos_id
            mask = torch.arange(out.shape[1])[None, :] <= body[:, None]
        else:
            mask = torch.arange(out.shape[1])[None, :] < body[:, None]
        return out, mask.long()

    def assemble(self, local: torch.Tensor, templates: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
        """``local`` [B, F] per-field value indices, ``templates`` one index or [B] indices →
        (input_ids, attention_mask) [B, L]."""
        local = local.cpu()
        if isinstance(templates, int):
            return self._assemble_one(local, templates)
        templates = templates.cpu()
        groups = {int(t): (templates == t).nonzero(as_tuple=True)[0] for t in torch.unique(templates)}
        built = {t: self._assemble_one(local[rows], t) for t, rows in groups.items()}
        length = max(ids.shape[1] for ids, _ in built.values())
        input_ids = torch.full((local.shape[0], length), self.pad_id, dtype=torch.long)
        attention = torch.zeros((local.shape[0], length), dtype=torch.long)
        for t, rows in groups.items():
            ids, mask = built[t]
            input_ids[rows, : ids.shape[1]] = ids
            attention[rows, : mask.shape[1]] = mask
        return input_ids, attention


def p5_click_probability(yes_no_scores: torch.Tensor) -> torch.Tensor:
    """``P(click) = softmax([s_yes, s_no])[yes]`` for scores [..., 2] (= sigmoid(s_yes - s_no))."""
    return torch.softmax(yes_no_scores.float(), dim=-1)[..., 0]


class P5Module(CTRStage):
    def __init__(
        self,
        model: nn.Module,
        prompts: PromptBuilder,
        yes_id: int,
        no_id: int,
        value_table=None,
        loss: str = "lm",
        eval_template: int | str = "mean",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        if loss not in ("lm", "bce"):
            raise ValueError(f"P5 loss must be 'lm' or 'bce', got {loss!r}")
        if eval_template != "mean" and not 0 <= int(eval_template) < prompts.num_templates:
            raise ValueError(f"eval_template must be 'mean' or in [0, {prompts.num_templates}), got {eval_template!r}")
        if yes_id == no_id:
            raise ValueError("the yes and no target tokens must differ")
        self.model = model
        self.prompts = prompts
        self.value_table = value_table  # artifact.value_ids [N, F] (memory-mapped): row_ids → value indices
        self.yes_id, self.no_id = int(yes_id), int(no_id)
        self.loss_type = loss
        self.eval_template = eval_template
        self.lr, self.weight_decay = lr, weight_decay
        self.save_hyperparameters(ignore=["model", "prompts", "value_table"])

    # -- inputs -------------------------------------------------------------------------------
    def local_values(self, batch: dict) -> torch.Tensor:
        if "value_ids" in batch:
            return batch["value_ids"]
        if self.value_table is None:
            raise ValueError("P5Module needs the artifact's value table (value_table=) or batch['value_ids']")
        rows = batch["row_ids"].detach().cpu().numpy()
        return torch.from_numpy(np.asarray(self.value_table[rows], dtype=np.int64))

    def encode_inputs(self, batch: dict, templates: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
        input_ids, attention = self.prompts.assemble(self.local_values(batch), templates)
        return input_ids.to(self.device), attention.to(self.device)

    def _start(self, batch_size: int) -> torch.Tensor:
        start = self.model.config.decoder_start_token_id
        return torch.full((batch_size, 1), int(start if start is not None else 0), dtype=torch.long, device=self.device)

    # -- scores --------------------------------------------------------------------------------
    def yes_no_scores(self, batch: dict, template: torch.Tensor | int) -> torch.Tensor:
        """[B, 2]: the first decoder step's logits of the target words ("yes", "no")."""
        input_ids, attention = self.encode_inputs(batch, template)
        out = self.model(input_ids=input_ids, attention_mask=attention, decoder_input_ids=self._start(input_ids.shape[0]))
        return out.logits[:, 0, [self.yes_id, self.no_id]].float()

    @staticmethod
    def click_logit(scores: torch.Tensor) -> torch.Tensor:
        """log-odds of ``softmax(scores)[yes]``: ``s_yes - s_no``."""
        return scores[..., 0] - scores[..., 1]

    def forward(self, batch: dict) -> torch.Tensor:
        if self.eval_template == "mean":
            logits = [self.click_logit(self.yes_no_scores(batch, t)) for t in range(self.prompts.num_templates)]
            return torch.stack(logits).mean(0)
        return self.click_logit(self.yes_no_scores(batch, int(self.eval_template)))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        labels = batch["labels"]
        batch_size = labels.shape[0]
        templates = torch.randint(self.prompts.num_templates, (batch_size,))
        input_ids, attention = self.encode_inputs(batch, templates)
        words = torch.where(labels > 0.5, self.yes_id, self.no_id).long().to(self.device)
        targets = [words[:, None]]
        if self.prompts.eos_id is not None:
            targets.append(torch.full_like(words[:, None], self.prompts.eos_id))
        targets = torch.cat(targets, 1)
        decoder_inputs = torch.cat([self._start(batch_size), targets[:, :-1]], 1)
        logits = self.model(input_ids=input_ids, attention_mask=attention, decoder_input_ids=decoder_inputs).logits
        click = self.click_logit(logits[:, 0, [self.yes_id, self.no_id]].float())
        if self.loss_type == "lm":
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))
        else:
            loss = self.bce(click, labels)
        self.log_dict({"train/loss": loss.detach(), "train/bce": self.bce(click.detach(), labels)}, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


def load_t5(plm_cfg) -> tuple[nn.Module, object]:
    """(T5ForConditionalGeneration, tokenizer) from ``cfg.plm`` (see the module docstring)."""
    from transformers import T5Config, T5ForConditionalGeneration

    from flip_ctr.models.plm import load_tokenizer, resolve_plm_path

    tokenizer = load_tokenizer(plm_cfg.get("tokenizer") or plm_cfg.name_or_path)
    random_init = plm_cfg.get("random_init")
    if random_init is not None:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        config = T5Config(
            vocab_size=len(tokenizer), pad_token_id=pad, eos_token_id=eos, decoder_start_token_id=pad, **dict(random_init)
        )
        model = T5ForConditionalGeneration(config)
    else:
        model = T5ForConditionalGeneration.from_pretrained(resolve_plm_path(plm_cfg.name_or_path))
    keep = plm_cfg.get("keep_layers")
    if keep is not None:
        for stack in (model.encoder, model.decoder):
            stack.block = nn.ModuleList(list(stack.block)[: int(keep)])
        model.config.num_layers = model.config.num_decoder_layers = len(model.encoder.block)
    return model.float().train(), tokenizer


def build_p5(cfg, stage, datamodule, stage_dir) -> P5Module:
    model, tokenizer = load_t5(cfg.plm)
    space = datamodule.space
    context_side = stage.get("context_side", "user")
    prompts = PromptBuilder(
        space.schema.field_names,
        space.values,
        fields_of_side(space.schema, "user", context_side),
        fields_of_side(space.schema, "item", context_side),
        tokenizer,
        templates=list(stage.get("templates") or DEFAULT_TEMPLATES),
        max_length=stage.get("max_length", 256),
        max_value_tokens=stage.get("max_value_tokens", 32),
    )
    return P5Module(
        model,
        prompts,
        yes_id=single_token_id(tokenizer, stage.get("yes_word", "yes")),
        no_id=single_token_id(tokenizer, stage.get("no_word", "no")),
        value_table=datamodule.artifact.value_ids,
        loss=stage.get("loss", "lm"),
        eval_template=stage.get("eval_template", "mean"),
        lr=stage.lr,
        weight_decay=stage.weight_decay,
    )
