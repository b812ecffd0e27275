"""flip_ctr.callbacks.RngState: the global generators saved in a checkpoint come back when a fit
resumes from it, and only then (trainer.test(ckpt_path=...) loads checkpoints too). The end-to-end
bit-exact resume is tests/test_fault_tolerance.py."""

from __future__ import annotations

import io
import random
from types import SimpleNamespace

import numpy as np
import torch
from lightning.pytorch.trainer.states import TrainerFn

from flip_ctr.callbacks import RngState


def draws() -> tuple:
    return torch.rand(4), np.random.rand(3), random.random()


def trainer(fn: TrainerFn, processed: int = 0, per_epoch: int = 10):
    progress = SimpleNamespace(current=SimpleNamespace(processed=processed))
    return SimpleNamespace(state=SimpleNamespace(fn=fn), num_training_batches=per_epoch,
                           fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress)))


def saved_checkpoint() -> tuple[dict, tuple]:
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    checkpoint: dict = {}
    RngState().on_save_checkpoint(None, None, checkpoint)
    after = draws()
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True), after  # loadable without unpickling arbitrary objects


def same(a: tuple, b: tuple) -> bool:
    return torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_a_resumed_fit_draws_what_followed_the_checkpoint():
    checkpoint, after = saved_checkpoint()
    callback = RngState()
    callback.on_load_checkpoint(trainer(TrainerFn.FITTING), None, checkpoint)
    assert same(draws(), after)


def test_mid_epoch_the_generators_are_put_back_again_before_the_first_batch():
    checkpoint, after = saved_checkpoint()
    callback = RngState()
    callback.on_load_checkpoint(trainer(TrainerFn.FITTING), None, checkpoint)
    torch.rand(1)  # the training iterator's base seed, drawn after the load
    callback.on_train_start(trainer(TrainerFn.FITTING, processed=4), None)
    assert same(draws(), after)


def test_at_an_epoch_boundary_the_iterator_draws_from_the_restored_state():
    checkpoint, after = saved_checkpoint()
    callback = RngState()
    callback.on_load_checkpoint(trainer(TrainerFn.FITTING), None, checkpoint)
    first = torch.rand(4)  # what the new epoch's iterator draws, as the uninterrupted run did
    assert torch.equal(first, after[0])
    callback.on_train_start(trainer(TrainerFn.FITTING, processed=10, per_epoch=10), None)
    assert not torch.equal(torch.rand(4), after[0])  # not put back a second time


def test_loading_a_checkpoint_to_test_leaves_the_generators_alone():
    checkpoint, after = saved_checkpoint()
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    expected = draws()
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    RngState().on_load_checkpoint(trainer(TrainerFn.TESTING), None, checkpoint)
    assert same(draws(), expected)
