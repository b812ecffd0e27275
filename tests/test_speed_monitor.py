"""speed.json (flip_ctr.callbacks.SpeedMonitor): what the scale benchmark reads off a real run."""

import json
import time

import lightning as L
import torch

from flip_ctr.callbacks import SpeedMonitor

VALIDATION_SLEEP = 0.2


class _Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch["x"]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        if batch_idx == 0:
            time.sleep(VALIDATION_SLEEP)  # a slow validation pass must not count as training time

    def test_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _loader(rows, batch_size):
    data = [{"x": torch.randn(3), "labels": torch.tensor(1.0)} for _ in range(rows)]
    return torch.utils.data.DataLoader(data, batch_size=batch_size)


def test_speed_json_has_training_rate_validation_and_test_time(tmp_path):
    trainer = L.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path,
                        callbacks=[SpeedMonitor(warmup_steps=2)])
    module = _Tiny()
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=_loader(64, 8), val_dataloaders=_loader(16, 8))
    fit_wall = time.perf_counter() - start
    speed = json.loads((tmp_path / "speed.json").read_text())
    assert speed["validation_passes"] == 3
    assert speed["validation_seconds"] >= 3 * VALIDATION_SLEEP
    assert speed["measured_samples"] == 3 * 64 - 2 * 8  # all training batches after the 2 warm-up steps
    # the three sleeps are outside the training window
    assert speed["measured_seconds"] <= fit_wall - 3 * VALIDATION_SLEEP
    assert speed["peak_rss_main_process_gib"] > 0.05
    trainer.test(module, dataloaders=_loader(40, 16))
    tested = json.loads((tmp_path / "speed.json").read_text())
    assert tested["test_samples"] == 40 and tested["test_seconds"] > 0
    assert tested["measured_samples"] == speed["measured_samples"]  # the fit figures are kept
