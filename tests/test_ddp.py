"""Lightning DDP on CPU (gloo, 2 processes) through the real command line.

`flip-ctr pipeline trainer=ddp trainer.accelerator=cpu trainer.devices=2` runs alignment
pretraining and FLIP_ID finetuning on the ML-100K fixture with the tiny random PLM. A thin
wrapper around the CLI records, on every rank, what the ICL head saw at the first training step
(its inputs, the all-gathered projections, the loss and the gradients after DDP's all-reduce).
The ICL checks run twice: with the paper's whole-row text and with scale=cpu's per-field
states. The test then checks, in this process and without torch.distributed:

- ICL negatives come from both processes: each rank's gathered projections hold 2 x its local
  batch, its own rows at its offset and the other rank's rows elsewhere;
- the ICL loss averaged over the two ranks (per-device batch B/2) equals the single-process
  InfoNCE over the union batch B with the same weights, and so do the gradients (while a
  local-negatives-only loss would not);
- the test set evaluated across the two ranks (DistributedSampler pads an odd test set with a
  repeated row) gives the same metrics and predictions, row by row, as one process evaluating
  the same checkpoint, over exactly the test rows.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import lightning as L
import polars as pl
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from flip_ctr.models.alignment import ICLHead
from flip_ctr.stages.checkpoints import load_id_model
from flip_ctr.stages.finetune_id import FinetuneIDModule
from oracles import rank_auc
from test_cli import quiet_env
from test_datamodule import make_dm, write_ml100k_fixture

PRETRAIN_BATCH = 64  # per device

# Runs `flip-ctr <argv>` with probes on the ICL head; ranks > 0 re-run this same file.
WRAPPER = textwrap.dedent(
    '''
    import os
    from pathlib import Path

    import torch

    import flip_ctr.models.alignment as alignment
    from flip_ctr.stages.pretrain import AlignmentPretrainModule

    PROBE = Path(os.environ["FLIP_CTR_TEST_PROBE"])
    seen = {}
    _gather, _forward = alignment._gather_with_grad, alignment.ICLHead.forward


    def gather(*tensors):
        out = _gather(*tensors)
        if "gathered" not in seen:
            seen.update(local=[t.detach().clone() for t in tensors], gathered=[t.detach().clone() for t in out[:-1]],
                        offset=out[-1])
        return out


    def forward(self, cls_state, v):
        loss = _forward(self, cls_state, v)
        if self.training and "loss" not in seen:
            seen.update(head={k: t.detach().clone() for k, t in self.state_dict().items()},
                        inputs=(cls_state.detach().clone(), v.detach().clone()), loss=loss.detach().clone())
        return loss


    def on_before_optimizer_step(self, optimizer):  # after backward: DDP has averaged the gradients
        if "grads" not in seen and "loss" in seen:
            seen.update(grads={k: p.grad.detach().clone() for k, p in self.icl.named_parameters()},
                        world_size=self.trainer.world_size, rank=self.global_rank)
            torch.save(seen, PROBE / f"rank{self.global_rank}.pt")


    alignment._gather_with_grad = gather
    alignment.ICLHead.forward = forward
    AlignmentPretrainModule.on_before_optimizer_step = on_before_optimizer_step

    from flip_ctr.cli import main

    main()
    '''
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _launch_ddp(tmp_path_factory, text_encoding: str) -> dict:
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed unavailable")
    root = tmp_path_factory.mktemp(f"ddp_{text_encoding}")
    data = write_ml100k_fixture(root / "data" / "ml-100k")
    probe = root / "probe"
    probe.mkdir()
    wrapper = root / "ddp_wrapper.py"
    wrapper.write_text(WRAPPER)
    overrides = [
        "plm=tiny_random",
        f"data.data_dir={data}",
        f"data.cache_dir={root / 'cache'}",
        f"paths.log_dir={root / 'logs'}",
        "strategies=[finetune_id]",
        "stages.pretrain.max_epochs=1",
        f"stages.pretrain.batch_size={PRETRAIN_BATCH}",
        "stages.pretrain.limit_train_batches=2",
        "stages.finetune_id.max_epochs=1",
        "ablation.head_hidden_dim=32",
        "ablation.icl_dim=16",
        # one Linear per tower, no dropout: the probe's training-mode ICL loss can be recomputed exactly
        "ablation.icl_projection=l2",
        f"stages.pretrain.text_encoding={text_encoding}",
        # per field, the [CLS] position is one fixed state for every row: cls pooling (tiny_random's)
        # would give ICL the same text vector on every row and rank (refused; test_field_text_states)
        "plm.pooling=mean",
        "ablation.mlm_vocabulary=full",
        "logger=csv",
        "num_threads=1",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
    ]
    env = {**quiet_env(), "FLIP_CTR_TEST_PROBE": str(probe)}
    proc = subprocess.run(
        [sys.executable, str(wrapper), "pipeline", *overrides], capture_output=True, text=True, timeout=240, cwd=root, env=env
    )
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-6000:])
    runs = list((root / "logs").rglob("summary.json"))
    assert len(runs) == 1, runs
    return {"root": root, "data": data, "run": runs[0].parent, "probe": probe}


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """The paper's whole-row text path."""
    return _launch_ddp(tmp_path_factory, "row")


@pytest.fixture(scope="module")
def ddp_per_field_run(tmp_path_factory):
    """scale=cpu's per-field text states (precomputed on each rank, assembled per batch)."""
    return _launch_ddp(tmp_path_factory, "per_field")


both_text_encodings = pytest.mark.parametrize("run_fixture", ["ddp_run", "ddp_per_field_run"])


def _probes(ddp_run) -> list[dict]:
    probes = [torch.load(ddp_run["probe"] / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert [p["rank"] for p in probes] == [0, 1] and all(p["world_size"] == 2 for p in probes)
    return probes


@both_text_encodings
def test_icl_negatives_are_gathered_from_both_processes(run_fixture, request):
    probes = _probes(request.getfixturevalue(run_fixture))
    sizes = [p["local"][0].shape[0] for p in probes]
    assert sizes == [PRETRAIN_BATCH, PRETRAIN_BATCH]
    for rank, p in enumerate(probes):
        other = probes[1 - rank]
        assert p["offset"] == sum(sizes[:rank])
        for local, gathered, other_local in zip(p["local"], p["gathered"], other["local"]):
            # the logits of this rank have 2 x local-batch columns: every row of both ranks
            assert gathered.shape == (sum(sizes), local.shape[1])
            lo = p["offset"]
            assert torch.equal(gathered[lo : lo + sizes[rank]], local)
            other_lo = other["offset"]
            assert torch.equal(gathered[other_lo : other_lo + sizes[1 - rank]], other_local)
            assert not torch.equal(local, other_local)  # the two ranks saw different rows


@both_text_encodings
def test_icl_loss_and_gradients_equal_single_process_global_batch(run_fixture, request):
    ddp_run = request.getfixturevalue(run_fixture)
    probes = _probes(ddp_run)
    state = probes[0]["head"]
    for key, value in probes[1]["head"].items():  # DDP starts every rank from the same weights
        assert torch.equal(value, state[key]), key
    proj_dim, text_dim = state["text_proj.weight"].shape
    id_dim = state["tab_proj.weight"].shape[1]
    temperature = OmegaConf.load(ddp_run["run"] / "pretrain" / "config.yaml").ablation.temperature
    head = ICLHead(text_dim=text_dim, id_dim=id_dim, proj_dim=proj_dim, temperature=temperature)
    head.load_state_dict(state)
    cls_state = torch.cat([p["inputs"][0] for p in probes])
    v = torch.cat([p["inputs"][1] for p in probes])
    # one process, batch B = the union of the two ranks' B/2 rows
    full = head(cls_state, v)
    ddp_loss = torch.stack([p["loss"] for p in probes]).mean()
    assert torch.allclose(ddp_loss, full.detach(), rtol=1e-5, atol=1e-6), (ddp_loss, full)
    full.backward()
    for name, param in head.named_parameters():
        for p in probes:
            assert torch.allclose(p["grads"][name], param.grad, rtol=1e-4, atol=1e-6), name
    # the check has teeth: InfoNCE with each rank's local negatives only is a different number
    local_only = torch.stack([head(*p["inputs"]) for p in probes]).mean()
    assert not torch.allclose(local_only, full, rtol=1e-3)


def test_ddp_test_metrics_equal_single_process_evaluation(ddp_run, tmp_path):
    run = ddp_run["run"]
    assert (run / "pretrain" / "aligned" / "id_model.pt").is_file()
    stage_dir = run / "finetune_id"
    metrics = json.loads((stage_dir / "metrics.json").read_text())
    dm = make_dm(ddp_run["data"], ddp_run["root"] / "cache", batch_size=256, eval_batch_size=16)
    start, stop = dm.artifact.split_ranges["test"]
    assert (stop - start) % 2 == 1  # odd: the distributed sampler had to pad a repeated row
    assert metrics["num_test_rows"] == stop - start
    ddp_predictions = pl.read_parquet(stage_dir / "predictions.parquet")
    assert ddp_predictions["row_id"].to_list() == list(range(start, stop))  # each test row once

    # the same weights (the checkpoint the DDP run tested), evaluated by one process
    model, _ = load_id_model(run / "pretrain" / "aligned")
    module = FinetuneIDModule(model)
    checkpoint = torch.load(stage_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    module.load_state_dict(checkpoint["state_dict"])
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, default_root_dir=tmp_path, enable_progress_bar=False)
    trainer.test(module, datamodule=dm, verbose=False)
    single = json.loads((tmp_path / "metrics.json").read_text())
    assert single["num_test_rows"] == metrics["num_test_rows"]
    assert metrics["auc"] == pytest.approx(single["auc"], abs=1e-6)
    assert metrics["logloss"] == pytest.approx(single["logloss"], abs=1e-5)
    single_predictions = pl.read_parquet(tmp_path / "predictions.parquet")
    assert torch.allclose(
        torch.tensor(ddp_predictions["prob"].to_numpy()), torch.tensor(single_predictions["prob"].to_numpy()), atol=1e-6
    )
    # and the AUC really is over these predictions (a padded duplicate would shift it)
    probs = torch.tensor(single_predictions["prob"].to_numpy(), dtype=torch.double)
    labels = torch.tensor(single_predictions["label"].to_numpy(), dtype=torch.double)
    # an oracle written differently from the code under test (average-rank Mann-Whitney, not torchmetrics)
    assert metrics["auc"] == pytest.approx(rank_auc(labels.numpy(), probs.numpy()), abs=1e-6)
    assert metrics["logloss"] == pytest.approx(float(F.binary_cross_entropy(probs, labels)), abs=1e-5)
