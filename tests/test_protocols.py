"""The evaluation protocols (conf/protocol/) and the reference training recipe (L2, sum BCE).

refit and holdout must never let the test split influence a choice: poisoning the test labels
leaves the selected epoch count and every trained weight unchanged. paper selects on test and
must say so. refit's final model trains on exactly the whole training part.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from test_cli import compose_cfg
from test_datamodule import write_ml100k_fixture

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class RowRecorder(Callback):
    """Records the row ids of every training batch, per fit (keyed by the run directory)."""

    rows: dict[str, list[torch.Tensor]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        RowRecorder.rows.setdefault(trainer.default_root_dir, []).append(batch["row_ids"].clone())


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_ml100k_fixture(tmp_path_factory.mktemp("protocol_data") / "ml-100k")


def run_train(tmp_path: Path, data_dir: Path, protocol: str, poison_test_labels: bool = False, extra=()) -> tuple[dict, Path]:
    from flip_ctr.train import make_datamodule, run_stage

    out = tmp_path / f"{protocol}_{'poisoned' if poison_test_labels else 'clean'}"
    cfg = compose_cfg("train", [
        f"protocol={protocol}", f"data.data_dir={data_dir}", f"data.cache_dir={tmp_path / 'cache'}",
        "id_model.embedding_dim=4", "id_model.dnn_hidden_units=[8]", "stage.max_epochs=4", "stage.lr=0.01",
        "data.batch_size=32", "stage.batch_size=32", "logger=none", "callbacks.progress_bar=null",
        "+callbacks.rows._target_=test_protocols.RowRecorder", *extra,
    ], tmp_path=out)
    datamodule = make_datamodule(cfg, cfg.stage)
    datamodule.prepare_data()
    datamodule.setup()
    if poison_test_labels:
        start, stop = datamodule.artifact.split_ranges["test"]
        labels = datamodule.artifact.labels.copy()  # the cached arrays are read-only memory maps
        labels[start:stop] = 1 - labels[start:stop]
        datamodule.artifact.labels = labels
    metrics = run_stage(cfg, cfg.stage, out, datamodule=datamodule)
    return metrics, out


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)["state_dict"]


@pytest.mark.parametrize("protocol", ["refit", "holdout"])
def test_test_labels_cannot_change_any_choice(protocol, tmp_path, data_dir):
    clean, clean_dir = run_train(tmp_path, data_dir, protocol)
    poisoned, poisoned_dir = run_train(tmp_path, data_dir, protocol, poison_test_labels=True)
    # the poison reached the test metrics (flipped labels mirror the AUC) ...
    assert poisoned["auc"] == pytest.approx(1 - clean["auc"], abs=1e-6)
    # ... and nothing that was chosen or trained moved
    assert poisoned["selected_epochs"] == clean["selected_epochs"]
    assert poisoned["best_val_auc"] == clean["best_val_auc"] is not None
    a, b = final_weights(clean_dir), final_weights(poisoned_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert clean["protocol_name"] == protocol and "selected on test" not in clean["protocol"]


def test_refit_trains_the_selected_epochs_on_the_whole_training_part(tmp_path, data_dir):
    RowRecorder.rows.clear()
    metrics, run = run_train(tmp_path, data_dir, "refit")
    ranges = json.loads((run / "metrics.json").read_text())
    assert ranges["protocol_name"] == "refit" and ranges["selected_epochs"] == metrics["selected_epochs"]
    selection_rows = torch.cat(RowRecorder.rows[str(run / "selection")])
    final_rows = torch.cat(RowRecorder.rows[str(run)])
    from flip_ctr.data.datamodule import CTRDataModule

    datamodule = CTRDataModule(dataset="ml100k", data_dir=str(data_dir), cache_dir=str(tmp_path / "cache"))
    datamodule.setup()
    fit, train = datamodule.artifact.split_ranges["fit"], datamodule.artifact.split_ranges["train"]
    # selection: only the fit slice (the validation slice is held out)
    assert selection_rows.min() >= fit[0] and selection_rows.max() < fit[1]
    # final model: every row of the whole training part, once per selected epoch, and nothing else
    counts = torch.bincount(final_rows - train[0], minlength=train[1] - train[0])
    assert counts.numel() == train[1] - train[0]
    assert bool((counts == metrics["selected_epochs"]).all())
    assert metrics["train_rows"] == train[1] - train[0] and metrics["epochs_trained"] == metrics["selected_epochs"]
    # the selection saw the fit slice once per epoch it ran, at least as many as it kept
    assert selection_rows.numel() >= metrics["selected_epochs"] * (fit[1] - fit[0])


def test_paper_protocol_selects_on_test_and_says_so(tmp_path, data_dir):
    metrics, run = run_train(tmp_path, data_dir, "paper")
    assert metrics["protocol"] == "paper (selected on test)"
    assert json.loads((run / "metrics.json").read_text())["protocol"] == "paper (selected on test)"
    # its selecting score is the test AUC of the chosen epoch, and it is not called validation
    assert metrics["best_val_auc"] is None
    assert metrics["selection_auc"] == pytest.approx(metrics["auc"], abs=1e-6)
    # it trains on the whole training part
    assert metrics["train_split"] == "train"


def test_only_the_paper_protocol_may_select_on_test(tmp_path):
    from flip_ctr.train import _protocol

    cfg = compose_cfg("train", ["protocol=refit", "protocol.select_on=test"])
    with pytest.raises(ValueError, match="is the paper protocol's rule alone"):
        _protocol(cfg)


# ---------------------------------------------------------------------- the reference L2 recipe


def test_l2_penalty_adds_the_expected_amount():
    from flip_ctr.models.id import build_id_model
    from flip_ctr.stages.ctr import CTRModule

    torch.manual_seed(0)
    model = build_id_model("dcnv2", num_features=20, num_fields=3, embedding_dim=4, dnn_hidden_units=(8,),
                           linear_term=True, cross_type="mix", num_cross_layers=1, num_experts=2, low_rank=2)
    l2 = {"embedding": 1e-2, "linear": 2e-2, "head": 3e-2, "cross": 4e-2}
    module = CTRModule(model, l2=l2, bce_reduction="sum")
    module.log = lambda *a, **k: None  # no trainer attached
    ids = torch.randint(0, 20, (6, 3))
    labels = torch.tensor([0, 1, 1, 0, 1, 0])
    loss = module.training_step({"feature_ids": ids, "labels": labels}, 0)

    p = torch.sigmoid(model(ids)[1].detach().double())
    bce_sum = -sum(math.log(p[i]) if labels[i] else math.log(1 - p[i]) for i in range(6))
    squares = lambda t: float((t.detach().double() ** 2).sum())  # noqa: E731
    expected_penalty = (
        1e-2 * squares(model.embedding.weight)  # the whole table, mask row included
        + 2e-2 * squares(model.linear.weight)  # the first-order table, not its bias
        + 3e-2 * squares(model.head.weight)  # the output matrix, not its bias
        + 4e-2 * (squares(model.cross.u) + squares(model.cross.v) + squares(model.cross.c))  # not gates or biases
    )
    assert float(loss) == pytest.approx(bce_sum + expected_penalty, rel=1e-5)

    mean_module = CTRModule(model, l2={}, bce_reduction="mean")
    mean_module.log = lambda *a, **k: None
    assert float(mean_module.training_step({"feature_ids": ids, "labels": labels}, 0)) == pytest.approx(bce_sum / 6, rel=1e-5)


def test_l2_rejects_unknown_groups_and_bad_reduction():
    from flip_ctr.models.id import build_id_model
    from flip_ctr.models.id.regularization import l2_penalty
    from flip_ctr.stages.ctr import CTRModule

    model = build_id_model("deepfm", num_features=10, num_fields=2)
    with pytest.raises(ValueError, match="unknown L2 group 'dnn'"):
        l2_penalty(model, {"dnn": 1e-3})
    assert l2_penalty(model, {"cross": 1e-3}) is None  # DeepFM has no cross network: nothing to penalise
    with pytest.raises(ValueError, match="bce_reduction"):
        CTRModule(model, bce_reduction="avg")


def test_reference_recipe_reaches_the_model_and_the_loss(tmp_path):
    from flip_ctr.train import build_ctr

    cfg = compose_cfg("train", ["id_model=dcnv2_mix", "id_recipe=reference"])

    class Data:
        num_features, num_fields = 30, 3

    module = build_ctr(cfg, cfg.stage, Data(), tmp_path)
    assert module.bce_reduction == "sum" and module.l2 == {"embedding": 1e-5, "linear": 1e-5, "head": 1e-5, "cross": 1e-5}
    model = module.model
    assert model.linear is not None and type(model.cross).__name__ == "CrossNetMix" and len(model.cross.gate) == 2
    assert float(model.embedding.weight.detach().std()) < 1e-3
