"""stage.optimizer=lazy_adam under Lightning DDP (gloo, 2 CPU processes): the sparse gradients of
the feature tables are all-reduced as sparse tensors, and the result equals one process stepping
on the union of the two ranks' batches.

Before the feature tables were ``nn.Embedding`` subclasses DDP did not know their gradients were
sparse and the first backward failed ("Cannot access storage of SparseTensorImpl")."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
import torch.nn.functional as F

from flip_ctr.models.id import build_id_model
from flip_ctr.stages.lazy_adam import LazyAdam, use_sparse_embedding_gradients

ROWS, PER_RANK_BATCH, STEPS = 64, 8, 4

SCRIPT = textwrap.dedent(f"""
    import sys
    import lightning as L
    import torch
    from flip_ctr.models.id import build_id_model
    from flip_ctr.stages.ctr import CTRModule

    def model():
        torch.manual_seed(0)
        return build_id_model("dcnv2", num_features=40, num_fields=3, embedding_dim=4, dnn_hidden_units=[8],
                              num_cross_layers=1, linear_term=True)

    if __name__ == "__main__":
        data = torch.load(sys.argv[1])
        rows = [{{"feature_ids": i, "labels": y}} for i, y in zip(data["ids"], data["labels"])]
        loader = torch.utils.data.DataLoader(rows, batch_size={PER_RANK_BATCH}, shuffle=False)
        module = CTRModule(model(), lr=0.05, optimizer="lazy_adam")
        trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps={STEPS}, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            default_root_dir=sys.argv[3])
        trainer.fit(module, loader)
        if trainer.is_global_zero:
            torch.save(module.model.state_dict(), sys.argv[2])
""")


def one_process_oracle(ids: torch.Tensor, labels: torch.Tensor) -> dict:
    torch.manual_seed(0)
    model = build_id_model("dcnv2", num_features=40, num_fields=3, embedding_dim=4, dnn_hidden_units=[8],
                           num_cross_layers=1, linear_term=True)
    use_sparse_embedding_gradients(model)
    optimizer = LazyAdam(model.parameters(), lr=0.05)
    # Lightning gives the training loader a DistributedSampler(shuffle=True, seed=0): epoch 0 is
    # randperm(N) under seed 0 + epoch, and rank r reads every second index from position r
    generator = torch.Generator()
    generator.manual_seed(0)
    order = torch.randperm(ROWS, generator=generator)
    for step in range(STEPS):
        rank_rows = [order[r::2][step * PER_RANK_BATCH:(step + 1) * PER_RANK_BATCH] for r in (0, 1)]
        # DDP averages the two ranks' mean-loss gradients: the mean loss over both batches
        losses = [F.binary_cross_entropy_with_logits(model(ids[r])[1], labels[r]) for r in rank_rows]
        optimizer.zero_grad()
        (sum(losses) / 2).backward()
        optimizer.step()
    return model.state_dict()


def test_lazy_adam_under_ddp_equals_one_process_on_the_union_batch(tmp_path):
    torch.manual_seed(1)
    ids = torch.randint(0, 30, (ROWS, 3))  # ids 30..39 never occur: their rows must stay as initialised
    labels = (ids[:, 0] % 2).float()
    torch.save({"ids": ids, "labels": labels}, tmp_path / "data.pt")
    (tmp_path / "fit.py").write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(tmp_path / "fit.py"), str(tmp_path / "data.pt"), str(tmp_path / "ddp.pt"), str(tmp_path)],
                          capture_output=True, text=True, timeout=280, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = torch.load(tmp_path / "ddp.pt")
    oracle = one_process_oracle(ids, labels)
    torch.manual_seed(0)
    start = build_id_model("dcnv2", num_features=40, num_fields=3, embedding_dim=4, dnn_hidden_units=[8],
                           num_cross_layers=1, linear_term=True).state_dict()
    assert set(ddp) == set(oracle)
    for name, value in oracle.items():
        torch.testing.assert_close(ddp[name], value, rtol=0, atol=1e-6, msg=name)
    assert not torch.equal(ddp["embedding.weight"][:30], start["embedding.weight"][:30])
    assert torch.equal(ddp["embedding.weight"][30:], start["embedding.weight"][30:])
