"""Modality transformation: tabular row → "<field name> is <value>." sentences (paper §IV-B).

Tokenizing every sample is the slow part of PLM-based CTR pipelines (the reference code calls
the tokenizer inside ``__getitem__``). Here each *distinct* field value is tokenized once and
every sample's token sequence is assembled from those pieces with tensor ops at batch time.
Assembly also yields, for every token, the field whose sentence it belongs to and whether it
is part of the value span — field-level masking (paper §IV-C1) needs exactly that map.

Sequence layout: [CLS] s_1 s_2 ... s_F [SEP], s_f = tokens("<name_f> is") + tokens(value) + tokens(".")
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from flip_ctr.data.preprocess import LONG_WORK_VALUES

log = logging.getLogger(__name__)

# Bumped whenever what is stored under <artifact>/text_pieces/ changes meaning.
TEXT_PIECES_FORMAT = 1
_PIECE_ARRAYS = ("tokens", "lengths", "value_lengths")


@dataclass
class FieldPieces:
    """All sentences of one field as a padded matrix, one row per local value index."""

    tokens: torch.Tensor  # [num_values, max_piece_len] int64, padded with 0
    lengths: torch.Tensor  # [num_values] int64
    value_lengths: torch.Tensor  # [num_values] int64
    prefix_length: int


@dataclass
class TokenizedBatch:
    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    token_field_ids: torch.Tensor  # [B, L], -1 for [CLS]/[SEP]/padding
    value_token_mask: torch.Tensor  # [B, L] bool
    num_truncated: int


@dataclass
class RowLayout:
    """How a batch's field pieces (concatenated along dim 1, each padded to its field's width)
    map onto the assembled rows ``[CLS] s_1 ... s_F [SEP]``: the kept piece positions
    (``keep``, row-major) go to ``(rows, positions)``. Shared by the token ids and by anything
    laid out like them (per-field PLM states, :mod:`flip_ctr.models.field_text_states`)."""

    rows: torch.Tensor  # [N] row of each kept piece token
    positions: torch.Tensor  # [N] its position in the assembled row (1-based after [CLS])
    keep: torch.Tensor  # [B, sum of field widths] bool
    sep_positions: torch.Tensor  # [B] where [SEP] goes
    length: int  # padded length of the batch
    num_truncated: int  # rows cut to max_length

    def place(self, out: torch.Tensor, pieces: torch.Tensor) -> torch.Tensor:
        """Writes ``pieces`` [B, W, ...] at the kept positions of ``out`` [B, length, ...]."""
        device = out.device
        out[self.rows.to(device), self.positions.to(device)] = pieces[self.keep.to(pieces.device)]
        return out


class TextPieces:
    """Pre-tokenized sentence pieces for every (field, value), and batch assembly from them."""

    def __init__(
        self,
        field_names: list[str],
        values: list[list[str]],
        tokenizer,
        max_length: int = 256,
        max_value_tokens: int = 32,
    ) -> None:
        if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
            raise ValueError(f"tokenizer {type(tokenizer).__name__} has no CLS/SEP token; FLIP needs an encoder tokenizer")
        self.cls_id = int(tokenizer.cls_token_id)
        self.sep_id = int(tokenizer.sep_token_id)
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        self.max_length = max_length
        self.num_long_values = 0
        total = sum(len(vals) for vals in values)
        # Millions of distinct values (Criteo-scale ID fields) take minutes: say where we are.
        report = log.info if total >= LONG_WORK_VALUES else log.debug
        start = time.perf_counter()
        self.fields = []
        for f, (name, vals) in enumerate(zip(field_names, values)):
            self.fields.append(self._tokenize_field(f, name, vals, tokenizer, max_value_tokens))
            report("tokenized field %d/%d %r: %d values (%.1fs)", f + 1, len(field_names), name, len(vals), time.perf_counter() - start)
        log.info("tokenized %d distinct values of %d fields in %.1fs", total, len(field_names), time.perf_counter() - start)
        if self.num_long_values:
            log.warning("%d distinct values were cut to max_value_tokens=%d tokens", self.num_long_values, max_value_tokens)

    def _tokenize_field(self, index: int, name: str, values: list[str], tokenizer, max_value_tokens: int) -> FieldPieces:
        # Leading spaces keep byte-level BPE tokenizers (RoBERTa) identical to tokenizing the
        # joined sentence; WordPiece (BERT) ignores them.
        lead = "" if index == 0 else " "
        prefix = tokenizer(f"{lead}{name} is", add_special_tokens=False)["input_ids"]
        suffix = tokenizer(".", add_special_tokens=False)["input_ids"]
        flat, raw_lengths = tokenize_values(values, tokenizer)
        tokens, value_lengths = fill_pieces(flat, raw_lengths, prefix, suffix, max_value_tokens, self.pad_id)
        self.num_long_values += int((raw_lengths > max_value_tokens).sum())
        return FieldPieces(
            tokens=torch.from_numpy(tokens),
            lengths=torch.from_numpy(value_lengths + len(prefix) + len(suffix)),
            value_lengths=torch.from_numpy(value_lengths),
            prefix_length=len(prefix),
        )

    # -- stored with the artifact, memory-mapped -------------------------------------------
    def save(self, directory: str | Path) -> None:
        """Writes the pieces into ``directory`` atomically: one ``.npy`` per field and array, then
        ``pieces.json`` (the special tokens, each field's prefix length, every file's SHA-256)."""
        from flip_ctr.atomic import atomic_directory
        from flip_ctr.data.cache import hash_file

        # Parallel jobs (sweeps, DDP ranks) build identical pieces: the first one published wins.
        with atomic_directory(directory, published_marker="pieces.json") as tmp:
            files = {}
            for f, pieces in enumerate(self.fields):
                for name in _PIECE_ARRAYS:
                    file = f"field{f}_{name}.npy"
                    np.save(tmp / file, getattr(pieces, name).numpy())
                    files[file] = hash_file(tmp / file)
            meta = {
                "format": TEXT_PIECES_FORMAT,
                "special_tokens": {"cls": self.cls_id, "sep": self.sep_id, "pad": self.pad_id},
                "prefix_lengths": [p.prefix_length for p in self.fields],
                "num_long_values": self.num_long_values,
                "files": files,
            }
            (tmp / "pieces.json").write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, directory: str | Path, max_length: int, verify: bool = True) -> "TextPieces":
        """Pieces written by :meth:`save`, memory-mapped (copy-on-write: pages are shared by the
        DataLoader workers and nothing is read until a batch uses it). Raises
        :class:`~flip_ctr.data.preprocess.StaleCacheError` when anything is missing or altered."""
        from flip_ctr.data.cache import hash_file
        from flip_ctr.data.preprocess import StaleCacheError

        directory = Path(directory)
        try:
            meta = json.loads((directory / "pieces.json").read_text())
            if meta.get("format") != TEXT_PIECES_FORMAT:
                raise StaleCacheError(f"{directory}: text pieces format {meta.get('format')} != {TEXT_PIECES_FORMAT}")
            if verify:
                for file, digest in meta["files"].items():
                    if hash_file(directory / file) != digest:
                        raise StaleCacheError(f"{directory / file}: content does not match the digest in pieces.json")
            fields = []
            for f, prefix_length in enumerate(meta["prefix_lengths"]):
                arrays = {name: torch.from_numpy(np.load(directory / f"field{f}_{name}.npy", mmap_mode="c")) for name in _PIECE_ARRAYS}
                fields.append(FieldPieces(prefix_length=prefix_length, **arrays))
        except StaleCacheError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise StaleCacheError(f"{directory}: unreadable text pieces ({err})") from err
        pieces = cls.__new__(cls)
        special = meta["special_tokens"]
        pieces.cls_id, pieces.sep_id, pieces.pad_id = special["cls"], special["sep"], special["pad"]
        pieces.max_length = max_length
        pieces.num_long_values = meta["num_long_values"]
        pieces.fields = fields
        return pieces

    def token_ids(self) -> torch.Tensor:
        """Sorted ids of every token a piece contains (templates and values; no [CLS]/[SEP]/padding)."""
        ids = torch.cat([p.tokens[torch.arange(p.tokens.shape[1]) < p.lengths[:, None]] for p in self.fields])
        return torch.unique(ids)

    def layout(self, value_ids: torch.Tensor) -> RowLayout:
        """Where each field piece's tokens go in the assembled rows (see :class:`RowLayout`)."""
        batch_size = value_ids.shape[0]
        valid = []
        for f, pieces in enumerate(self.fields):
            pos = torch.arange(pieces.tokens.shape[1])
            valid.append(pos < pieces.lengths[value_ids[:, f].long(), None])
        valid = torch.cat(valid, 1)
        # Compact the valid tokens of each row to the left: target position = running count.
        body_len = valid.sum(1)
        limit = self.max_length - 2  # room for [CLS] and [SEP]
        target = torch.cumsum(valid.long(), 1)  # 1-based position after [CLS]
        keep = valid & (target <= limit)
        rows = torch.arange(batch_size)[:, None].expand_as(valid)
        sep_pos = torch.clamp(body_len, max=limit) + 1
        return RowLayout(
            rows=rows[keep],
            positions=target[keep],
            keep=keep,
            sep_positions=sep_pos,
            length=int(sep_pos.max()) + 1,
            num_truncated=int((body_len > limit).sum()),
        )

    def assemble(self, value_ids: torch.Tensor) -> TokenizedBatch:
        """value_ids [B, F] per-field local indices → padded token batch (dynamic padding)."""
        batch_size = value_ids.shape[0]
        tokens, field_of, is_value = [], [], []
        for f, pieces in enumerate(self.fields):
            local = value_ids[:, f].long()
            width = pieces.tokens.shape[1]
            pos = torch.arange(width)
            tokens.append(pieces.tokens[local])
            field_of.append(torch.full((batch_size, width), f, dtype=torch.long))
            in_value = (pos >= pieces.prefix_length) & (pos < pieces.prefix_length + pieces.value_lengths[local, None])
            is_value.append(in_value)
        layout = self.layout(value_ids)
        length = layout.length
        input_ids = torch.full((batch_size, length), self.pad_id, dtype=torch.long)
        token_field_ids = torch.full((batch_size, length), -1, dtype=torch.long)
        value_token_mask = torch.zeros((batch_size, length), dtype=torch.bool)
        layout.place(input_ids, torch.cat(tokens, 1))
        layout.place(token_field_ids, torch.cat(field_of, 1))
        layout.place(value_token_mask, torch.cat(is_value, 1))
        input_ids[:, 0] = self.cls_id
        input_ids[torch.arange(batch_size), layout.sep_positions] = self.sep_id
        attention_mask = (torch.arange(length)[None, :] <= layout.sep_positions[:, None]).long()
        return TokenizedBatch(input_ids, attention_mask, token_field_ids, value_token_mask, layout.num_truncated)


def tokenize_values(values: list[str], tokenizer, chunk_size: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of ``" " + value`` for every value (no special tokens), as one flat int64 array
    and the per-value lengths. Batched calls of ``chunk_size`` values; a fast tokenizer's Rust
    backend is called directly (``encode_batch``, what ``tokenizer(list)`` runs underneath, minus
    building the Python ``BatchEncoding``)."""
    backend = getattr(tokenizer, "_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is not None and (backend.truncation is not None or backend.padding is not None):
        backend = None  # a backend left truncating/padding would change the ids: use the plain call
    flats, lengths = [], []
    for start in range(0, len(values), chunk_size):
        texts = [f" {v}" for v in values[start : start + chunk_size]]
        if backend is not None:
            ids = [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
        else:
            ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        chunk_lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        flats.append(np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(chunk_lengths.sum())))
        lengths.append(chunk_lengths)
    if not lengths:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(flats), np.concatenate(lengths)


def fill_pieces(
    flat: np.ndarray, raw_lengths: np.ndarray, prefix: list[int], suffix: list[int], max_value_tokens: int, pad_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """The padded piece matrix ``prefix + value[:max_value_tokens] + suffix`` per row, by array
    indexing (no per-value Python work), and the kept value lengths."""
    num_values = len(raw_lengths)
    value_lengths = np.minimum(raw_lengths, max_value_tokens)
    num_prefix, num_suffix = len(prefix), len(suffix)
    width = num_prefix + int(value_lengths.max(initial=0)) + num_suffix
    tokens = np.full((num_values, width), pad_id, dtype=np.int64)
    if num_values == 0:
        return tokens, value_lengths
    tokens[:, :num_prefix] = np.asarray(prefix, dtype=np.int64)
    # position of every flat token inside its own value: running index minus its value's start
    starts = np.cumsum(raw_lengths) - raw_lengths
    rows = np.repeat(np.arange(num_values), raw_lengths)
    within = np.arange(len(flat)) - np.repeat(starts, raw_lengths)
    kept = within < max_value_tokens
    tokens[rows[kept], num_prefix + within[kept]] = flat[kept]
    every = np.arange(num_values)
    for j, token in enumerate(suffix):
        tokens[every, num_prefix + value_lengths + j] = token
    return tokens, value_lengths


def fill_pieces_loop(
    value_ids: list[list[int]], prefix: list[int], suffix: list[int], max_value_tokens: int, pad_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """The former per-value loop (reference for tests and the benchmark)."""
    value_lengths = np.array([min(len(v), max_value_tokens) for v in value_ids], dtype=np.int64)
    width = len(prefix) + int(value_lengths.max(initial=0)) + len(suffix)
    tokens = np.full((len(value_ids), width), pad_id, dtype=np.int64)
    for row, ids in enumerate(value_ids):
        sentence = prefix + list(ids[:max_value_tokens]) + suffix
        tokens[row, : len(sentence)] = sentence
    return tokens, value_lengths


def tokenizer_fingerprint(tokenizer) -> str:
    """SHA-256 of what decides a tokenizer's ids: its class and, for a fast tokenizer, the whole
    serialized pipeline (vocabulary, normaliser, pre-tokenizer), else its vocabulary."""
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is not None:
        # Truncation and padding are call-time state (``tokenizer(...)`` sets and clears them);
        # tokenize_values never applies them.
        pipeline = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")}
        spec = json.dumps(pipeline, sort_keys=True)
    else:
        spec = json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(f"{type(tokenizer).__name__}\n{spec}".encode()).hexdigest()


def cached_text_pieces(
    artifact_dir: str | Path, field_names: list[str], values: list[list[str]], tokenizer, max_length: int, max_value_tokens: int
) -> TextPieces:
    """The :class:`TextPieces` of an artifact's values, built once and stored with the artifact
    (``<artifact>/text_pieces/<key>/``, key = tokenizer fingerprint, ``max_value_tokens``, field
    names: the values themselves are the artifact's); later runs memory-map them. A damaged or
    outdated copy is rebuilt with a warning, as the artifact is."""
    from flip_ctr.data.cache import short_hash
    from flip_ctr.data.preprocess import StaleCacheError

    key = {"format": TEXT_PIECES_FORMAT, "tokenizer": tokenizer_fingerprint(tokenizer), "max_value_tokens": max_value_tokens,
           "fields": list(field_names)}
    directory = Path(artifact_dir) / "text_pieces" / short_hash(key)
    if (directory / "pieces.json").is_file():
        try:
            pieces = TextPieces.load(directory, max_length)
            log.info("using cached text pieces %s", directory)
            return pieces
        except StaleCacheError as err:
            log.warning("rebuilding text pieces: %s", err)
    pieces = TextPieces(field_names, values, tokenizer, max_length, max_value_tokens)
    try:
        pieces.save(directory)
    except OSError as err:  # a read-only or full cache: train from the pieces in memory
        log.warning("could not store text pieces in %s (%s): using them from memory, rebuilt next run", directory, err)
        return pieces
    # Read back memory-mapped: the built tensors are dropped, so workers share one copy.
    return TextPieces.load(directory, max_length, verify=False)


def render_sentence(field_names: list[str], row_values: list[str]) -> str:
    """The plain text of one row (docs, debugging, and the per-sample tokenization baseline)."""
    return " ".join(f"{name} is {value}." for name, value in zip(field_names, row_values))
