"""LightningDataModule yielding paired tabular/text batches.

Batch dict (every stage reads the keys it needs):

- ``feature_ids``      LongTensor [B, F]  global feature ids (unseen values → field OOV id)
- ``labels``           FloatTensor [B]
- ``row_ids``          LongTensor [B]     index of the row in the artifact (chronological order)
- with text (``tokenizer`` given):
  ``input_ids``, ``attention_mask`` [B, L] (dynamic padding), ``token_field_ids`` [B, L]
  (field of the sentence each token belongs to, -1 for [CLS]/[SEP]/padding),
  ``value_token_mask`` [B, L] (token is part of a field's value span),
  ``text_value_ids`` [B, F] (each field's text-side local value index: per-field text states)

Samples are row indices; the collate function gathers a whole batch with tensor indexing,
so a batch costs a few vectorised ops rather than B Python ``__getitem__`` calls.

Resuming mid-epoch: the training order is :class:`ResumableRandomSampler`'s, whose epoch seed is
saved in the checkpoint (:meth:`CTRDataModule.state_dict`), so a run resumed from a step
checkpoint trains the rest of the interrupted epoch on the same batches, in the same order, as
the uninterrupted run (with :class:`flip_ctr.callbacks.RngState` for dropout: bit-exact).

``engine`` (``data.engine``) says how the artifact is built and where batches are read from:
``memory`` (the loader reads the table into RAM; the collate function copies the id table into
a tensor once) or ``streaming`` (built out of core from a Parquet table; each batch is read
from the artifact's memory maps, so the [N, F] table is never copied into RAM). Both give
bit-identical batches.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from flip_ctr.data.preprocess import Artifact, SplitConfig
from flip_ctr.data.preprocess_large import check_engine, load_artifact
from flip_ctr.data.text import TextPieces, cached_text_pieces

log = logging.getLogger(__name__)


class RowRange(Dataset):
    """Row indices [start, stop) of the artifact; ``__getitems__`` hands the collate fn one tensor."""

    def __init__(self, start: int, stop: int) -> None:
        self.start, self.stop = start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, index: int) -> int:
        return self.start + index

    def __getitems__(self, indices: list[int]) -> torch.Tensor:
        return torch.as_tensor(indices, dtype=torch.long) + self.start


class ResumableRandomSampler(RandomSampler):
    """torch's RandomSampler, same draws, plus what a mid-epoch resume needs.

    Each epoch's order is ``randperm(n)`` from a seed drawn from torch's global generator, exactly
    as RandomSampler draws it (so the training order, and every number, equals the plain sampler's
    under the same seed). The seed is kept (:attr:`epoch_seed`). ``resume_point=(seed, rows done)``
    makes the first epoch replay a saved epoch from that row on, without drawing. A subclass of
    RandomSampler so that Lightning still swaps it for a DistributedSampler under DDP.
    """

    def __init__(self, data_source, resume_point: tuple[int, int] | None = None) -> None:
        super().__init__(data_source)
        self.epoch_seed: int | None = None
        self.resume_point = resume_point

    def __iter__(self):
        resume, self.resume_point = self.resume_point, None
        if resume is not None:
            seed, skip = resume
        else:  # RandomSampler's own draw, so the global generator advances exactly as it would
            seed, skip = int(torch.empty((), dtype=torch.int64).random_().item()), 0
        self.epoch_seed = seed
        generator = torch.Generator()
        generator.manual_seed(seed)
        yield from torch.randperm(len(self.data_source), generator=generator)[skip:].tolist()


class BatchBuilder:
    """Collate function: row indices → batch dict (see module docstring).

    ``in_memory=True`` copies the [N, F] value ids (int64) and the labels (float32) into tensors
    once: the fastest gathers, at 8·N·F bytes (plus one copy per spawned worker), fine up to
    ML-1M sizes. ``in_memory=False`` (the streaming engine) keeps the artifact's read-only memory
    maps and reads each batch's rows from them (:meth:`_gather`), so a 20M-row table costs the
    page cache, not process memory. Forked DataLoader workers share the maps; pickling (spawned
    workers) carries the artifact's path, not the arrays, and reopens them.
    """

    def __init__(self, artifact: Artifact, text: TextPieces | None, in_memory: bool = True) -> None:
        self.in_memory = in_memory
        self.path = Path(artifact.path)
        self.num_rows = len(artifact.labels)
        if in_memory:
            self.value_ids = torch.from_numpy(np.array(artifact.value_ids, dtype=np.int64))
            self.labels = torch.from_numpy(np.array(artifact.labels, dtype=np.float32))
        else:
            self.value_ids, self.labels = artifact.value_ids, artifact.labels
        self.num_seen = torch.tensor(artifact.space.num_seen, dtype=torch.long)
        self.field_offsets = torch.tensor(artifact.space.field_offsets[:-1], dtype=torch.long)
        self.text = text
        self.num_truncated = 0

    def __call__(self, rows) -> dict[str, torch.Tensor]:
        if not torch.is_tensor(rows):  # plain __getitem__ path (e.g. a custom sampler)
            rows = torch.as_tensor(rows, dtype=torch.long)
        local, labels = self._gather(rows)
        # Values never seen in training exist for the text side only; the ID side gets OOV (0).
        id_local = torch.where(local > self.num_seen, torch.zeros_like(local), local)
        batch = {
            "feature_ids": id_local + self.field_offsets,
            "labels": labels,
            "row_ids": rows,
        }
        if self.text is not None:
            tokenized = self.text.assemble(local)
            self.num_truncated += tokenized.num_truncated
            batch.update(
                input_ids=tokenized.input_ids,
                attention_mask=tokenized.attention_mask,
                token_field_ids=tokenized.token_field_ids,
                value_token_mask=tokenized.value_token_mask,
                text_value_ids=local,
            )
        return batch

    def _gather(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(local value ids [B, F] int64, labels [B] float32) of ``rows``. From the memory maps the
        rows are read in ascending order (sequential pages, not B random seeks) and put back."""
        lo, hi = (int(rows.min()), int(rows.max())) if len(rows) else (0, -1)
        if lo < 0 or hi >= self.num_rows:
            bad = lo if lo < 0 else hi
            raise IndexError(f"row index {bad} outside the artifact's {self.num_rows} rows ({self.path})")
        if self.in_memory:
            return self.value_ids[rows], self.labels[rows]
        index = rows.numpy()
        order = np.argsort(index, kind="stable")
        local = np.empty((len(index), self.value_ids.shape[1]), dtype=np.int64)
        labels = np.empty(len(index), dtype=np.float32)
        local[order] = self.value_ids[index[order]]
        labels[order] = self.labels[index[order]]
        return torch.from_numpy(local), torch.from_numpy(labels)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if not self.in_memory:  # the maps are reopened from the artifact's files, not pickled as arrays
            del state["value_ids"], state["labels"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if not self.in_memory:
            self.value_ids = np.load(self.path / "value_ids.npy", mmap_mode="r")
            self.labels = np.load(self.path / "labels.npy", mmap_mode="r")


class CTRDataModule(L.LightningDataModule):
    """Paired text/tabular batches for one dataset.

    Args:
        dataset: loader name (``flip_ctr.data.sources.LOADERS``).
        data_dir: dataset directory; ``None`` → ``FLIP_CTR_DATA_DIR`` or ``../shared/data/<subdir>``.
        loader_kwargs: extra arguments of the loader (e.g. ``ratings_file``).
        path, schema: ``dataset="table"``: the table (CSV/TSV/Parquet file or directory of Parquet
            files) and its YAML schema.
        name: the dataset's display name (run folders; conf/data/*.yaml). Metrics use the loaded
            schema's name (:attr:`dataset_name`), which for a table is the YAML's ``name:``.
        tokenizer: a Hugging Face tokenizer, its name/path, or ``None`` for ID-only batches.
        engine: ``memory`` (default: the loader reads the table into RAM, batches gather from an
            in-RAM copy) or ``streaming`` (out-of-core build from a Parquet table, batches read
            from the memory-mapped artifact: ``dataset`` ``table`` (Parquet) or ``synthetic_goodreads``).
    """

    def __init__(
        self,
        dataset: str,
        data_dir: str | None = None,
        data_subdir: str | None = None,
        loader_kwargs: dict | None = None,
        path: str | None = None,
        schema: str | None = None,
        name: str | None = None,
        cache_dir: str = ".cache/flip_ctr",
        test_fraction: float = 0.1,
        val_fraction: float = 0.1,
        tokenizer=None,
        max_length: int = 256,
        max_value_tokens: int = 32,
        batch_size: int = 256,
        eval_batch_size: int = 4096,
        num_workers: int = 0,
        pin_memory: bool = False,
        train_split: str = "fit",
        engine: str = "memory",
    ) -> None:
        super().__init__()
        self.dataset = dataset
        self.data_dir = data_dir
        self.data_subdir = data_subdir
        self.loader_kwargs = dict(loader_kwargs or {})
        self.path, self.schema, self.name = path, schema, name
        self.cache_dir = Path(cache_dir)
        self.split = SplitConfig(test_fraction=test_fraction, val_fraction=val_fraction)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.max_value_tokens = max_value_tokens
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        if train_split not in ("fit", "train"):
            raise ValueError(f"train_split must be 'fit' (train minus validation) or 'train' (all), got {train_split!r}")
        self.train_split = train_split
        check_engine(dataset, engine)
        self.engine = engine
        # What the validation loop reads: "val" (the slice before the test period), or "test"
        # under the paper protocol, whose model selection reproduces the authors' rule.
        self.val_split = "val"
        self.artifact: Artifact | None = None
        self.text: TextPieces | None = None
        self._train_sampler: ResumableRandomSampler | None = None
        self._saved_shuffle: dict | None = None  # from a checkpoint: the interrupted epoch's seed

    # -- resuming (Lightning saves and restores these with the checkpoint) --------------------
    def state_dict(self) -> dict:
        seed = None if self._train_sampler is None else self._train_sampler.epoch_seed
        return {"train_epoch_seed": seed}

    def load_state_dict(self, state_dict: dict) -> None:
        self._saved_shuffle = dict(state_dict)

    def _resume_point(self, num_rows: int, batch_size: int) -> tuple[int, int] | None:
        """(saved epoch seed, rows already trained) when Lightning restarts in the middle of an
        epoch, else None. Called from ``train_dataloader`` inside Lightning's ``setup_data``: the
        loop has its restored progress, in which the batch whose ``on_train_batch_end`` wrote the
        checkpoint is ``processed`` but not yet ``completed`` (the epoch loop completes it in
        ``reset``, later): ``processed`` is what was trained."""
        from lightning.pytorch.trainer.connectors.data_connector import _parse_num_batches
        from lightning.pytorch.trainer.states import RunningStage

        saved = (self._saved_shuffle or {}).get("train_epoch_seed")
        trainer = self.trainer
        if saved is None or trainer is None or not trainer.fit_loop.restarting:
            return None
        loop = trainer.fit_loop.epoch_loop
        done = loop.batch_progress.current.processed
        per_epoch = _parse_num_batches(RunningStage.TRAINING, -(-num_rows // batch_size), trainer.limit_train_batches)
        if not 0 < done < per_epoch:  # saved at an epoch boundary: the next epoch starts afresh
            return None
        self._saved_shuffle = None
        log.info("resuming the interrupted epoch's order after %d batches", done)
        return saved, done * batch_size

    # -- data preparation -------------------------------------------------------------
    def source(self):
        """What to load (:func:`flip_ctr.data.sources.data_source`): the loader and the files it reads."""
        from flip_ctr.data.sources import data_source

        return data_source(self.dataset, self.data_dir, self.data_subdir, self.loader_kwargs, self.path, self.schema)

    def resolved_data_dir(self) -> Path:
        from flip_ctr.data.sources import dataset_dir

        return dataset_dir(self.data_dir, self.data_subdir)

    def _load_artifact(self) -> Artifact:
        return load_artifact(self.source(), self.split, self.cache_dir, self.engine)

    def prepare_data(self) -> None:
        # Runs on one process per node: builds the cache so the other ranks only read it.
        self._load_artifact()

    def setup(self, stage: str | None = None) -> None:
        if self.artifact is None:
            self.artifact = self._load_artifact()
        if self.tokenizer is not None and self.text is None:
            tokenizer = self.tokenizer
            if isinstance(tokenizer, (str, Path)):
                from flip_ctr.models.plm import load_tokenizer

                tokenizer = load_tokenizer(str(tokenizer))
            space = self.artifact.space
            self.text = cached_text_pieces(
                self.artifact.path, space.schema.field_names, space.values, tokenizer, self.max_length, self.max_value_tokens
            )

    # -- facts the models need -----------------------------------------------------------
    @property
    def space(self):
        if self.artifact is None:
            self.setup()
        return self.artifact.space

    @property
    def dataset_name(self) -> str:
        """The loaded dataset's name (a table's schema ``name:``), for metrics and tables."""
        return self.space.schema.name

    @property
    def num_features(self) -> int:
        return self.space.num_features

    @property
    def num_fields(self) -> int:
        return self.space.num_fields

    # -- loaders ---------------------------------------------------------------------------
    def _loader(self, split: str, shuffle: bool, batch_size: int) -> DataLoader:
        if self.artifact is None:
            self.setup()
        start, stop = self.artifact.split_ranges[split]
        if stop <= start:
            raise ValueError(f"{self.dataset}: the {split!r} split is empty (check val_fraction/test_fraction)")
        rows = RowRange(start, stop)
        sampler = None
        if shuffle:
            sampler = self._train_sampler = ResumableRandomSampler(rows, self._resume_point(len(rows), batch_size))
        return DataLoader(
            rows,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=BatchBuilder(self.artifact, self.text, in_memory=self.engine == "memory"),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_split, True, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_split, False, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False, self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()


def synthetic_goodreads_datamodule(
    num_rows: int = 20_000, seed: int = 0, loader_kwargs: dict | None = None, engine: str = "streaming", **kwargs
) -> CTRDataModule:
    """``conf/data/synthetic_goodreads.yaml``: the GoodReads-shaped synthetic table of ``num_rows``
    rows drawn from ``seed`` (:mod:`flip_ctr.data.sources.synthetic_goodreads`), through the
    normal :class:`CTRDataModule` path. ``loader_kwargs`` may set other ``SyntheticSpec`` fields.
    ``engine`` defaults to ``streaming``: this dataset is the scale path."""
    loader_kwargs = {**(loader_kwargs or {}), "num_rows": int(num_rows), "seed": int(seed)}
    return CTRDataModule(loader_kwargs=loader_kwargs, engine=engine, **kwargs)
