"""The stage LightningModules: alignment pretraining (every ablation), the checkpoint contract
between pretraining and the three finetuning strategies, FLIP_ID without the PLM stack, and
the joint (FLIP) objective. Tiny random PLM (MiniLM vocabulary, 2 layers, 32 hidden) and a
small DCNv2, on batches of the ML-100K fixture of test_datamodule.py."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import polars as pl
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from flip_ctr.data.datamodule import BatchBuilder
from flip_ctr.analysis import icl_head_from
from flip_ctr.data.masking import num_masked
from flip_ctr.models.id import build_id_model
from flip_ctr.models.plm import PLMEncoder
from flip_ctr.stages.checkpoints import load_aligned_plm, load_heads, load_id_model
from flip_ctr.stages.finetune import FinetuneJointModule, FinetunePLMModule
from flip_ctr.stages.finetune_id import FinetuneIDModule
from flip_ctr.stages.pretrain import AlignmentConfig, AlignmentPretrainModule
from conftest import WITHOUT_TRANSFORMERS
from oracles import check_test_outputs
from test_datamodule import make_dm, write_ml100k_fixture

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
TERMS = ("mlm", "mtm", "icl")
SMALL_HEADS = {"head_hidden_dim": 32, "icl_dim": 16, "num_noise": 5}


# ----------------------------------------------------------------------------- fixtures


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def dm(tmp_path_factory, minilm_tokenizer):
    root = tmp_path_factory.mktemp("stages")
    return make_dm(write_ml100k_fixture(root / "ml-100k"), root / "cache", minilm_tokenizer, batch_size=32, eval_batch_size=64)


@pytest.fixture(scope="module")
def batch(dm):
    return BatchBuilder(dm.artifact, dm.text)(torch.arange(64))


def id_spec(dm) -> dict:
    return {"name": "dcnv2", "num_features": dm.num_features, "num_fields": dm.num_fields, "embedding_dim": 8,
            "dnn_hidden_units": [16, 16], "num_cross_layers": 1}


def tiny_plm(seed: int = 0) -> PLMEncoder:
    torch.manual_seed(seed)
    return PLMEncoder.random_like("minilm_l6", hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def tiny_id(dm, seed: int = 0):
    torch.manual_seed(seed)
    return build_id_model(**id_spec(dm))


def pretrain_module(dm, alignment: dict | AlignmentConfig, **kw) -> AlignmentPretrainModule:
    if isinstance(alignment, dict):
        alignment = {**SMALL_HEADS, **alignment}
    art = dm.artifact
    return AlignmentPretrainModule(
        id_model=kw.pop("id_model", None) or tiny_id(dm),
        plm=kw.pop("plm", None) or tiny_plm(),
        feature_frequencies=torch.tensor(art.feature_frequencies, dtype=torch.float),
        field_offsets=art.space.field_offsets,
        alignment=alignment,
        id_model_spec=id_spec(dm),
        **kw,
    )


def gen(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def load_ablation(path: Path) -> dict:
    """conf/ablation/<name>.yaml with its Hydra defaults list (``- full``, ``- _self_``) applied."""
    raw = OmegaConf.load(path)
    own = {k: v for k, v in raw.items() if k != "defaults"}
    merged = OmegaConf.create()
    for entry in raw.get("defaults", ["_self_"]):
        merged = OmegaConf.merge(merged, own if entry == "_self_" else load_ablation(path.parent / f"{entry}.yaml"))
    if "_self_" not in raw.get("defaults", ["_self_"]):
        merged = OmegaConf.merge(merged, own)
    return OmegaConf.to_container(merged)


ABLATIONS = sorted(CONF.glob("ablation/*.yaml"))


def grads(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad for p in module.parameters() if p.grad is not None and p.grad.abs().sum() > 0]


# ----------------------------------------------------------------------------- pretraining objective


def test_ablation_configs_exist_and_match_alignment_config():
    assert {p.stem for p in ABLATIONS} >= {"full", "no_pretrain"} and len(ABLATIONS) > 2
    fields = set(AlignmentConfig.__dataclass_fields__)
    for path in ABLATIONS:
        cfg = load_ablation(path)
        assert cfg["name"] == path.stem
        assert set(cfg) - {"name", "pretrain"} <= fields, path.name  # AlignmentConfig(**ablation) must accept it


@pytest.mark.parametrize("path", ABLATIONS, ids=[p.stem for p in ABLATIONS])
def test_ablation_terms_and_gradients(path, dm, batch):
    cfg = load_ablation(path)
    pretrain = cfg.pop("pretrain")
    cfg.pop("name")
    enabled = {t for t in TERMS if cfg[f"use_{t}"]}
    if not enabled:
        assert not pretrain
        with pytest.raises(ValueError, match="no_pretrain"):
            pretrain_module(dm, cfg)
        return
    assert pretrain
    module = pretrain_module(dm, cfg)
    out = module.compute_losses(batch, gen(0))
    expected = enabled | {f"{t}_acc" for t in enabled - {"icl"}} | {"loss"}
    assert set(out) == expected
    for key, value in out.items():
        assert value.ndim == 0 and torch.isfinite(value), key
    assert torch.allclose(out["loss"], sum(out[t] for t in enabled))
    out["loss"].backward()
    for term in TERMS:
        head = getattr(module, term, None)
        if term in enabled:
            assert head is not None and grads(head), f"{term} head gets no gradient"
        else:
            assert head is None or not grads(head), f"disabled {term} head still trained"
    # alignment updates both encoders, never the ID model's own logit layer (FLIP_ID's fresh head)
    assert grads(module.id_model) and grads(module.plm)
    assert all(p.grad is None or not p.grad.any() for p in module.id_model.head.parameters())
    if not cfg["joint_reconstruction"]:
        if "mlm" in enabled:
            assert module.mlm.transform[0].in_features == module.plm.hidden_size
        if "mtm" in enabled:
            assert module.mtm.mlp_w1.shape[1] == module.id_model.representation_dim


@pytest.mark.parametrize("joint", [True, False])
def test_joint_reconstruction_controls_the_cross_modal_gradient(joint, dm, batch):
    only = {"use_mlm": False, "use_mtm": False, "use_icl": False, "joint_reconstruction": joint}
    # MLM alone: with joint reconstruction the ID model helps predict tokens, without it it must not
    mlm = pretrain_module(dm, {**only, "use_mlm": True})
    out = mlm.compute_losses(batch, gen(1))
    assert set(out) == {"mlm", "mlm_acc", "loss"}
    out["mlm"].backward()
    assert grads(mlm.plm)
    assert bool(grads(mlm.id_model)) is joint
    # MTM alone: likewise the PLM's text states
    mtm = pretrain_module(dm, {**only, "use_mtm": True})
    out = mtm.compute_losses(batch, gen(1))
    assert set(out) == {"mtm", "mtm_acc", "loss"}
    out["mtm"].backward()
    assert grads(mtm.id_model)
    assert bool(grads(mtm.plm)) is joint


def test_masks_field_level_vs_token_level(dm, batch):
    fields, value = batch["token_field_ids"], batch["value_token_mask"]
    special = fields < 0
    template = ~value & ~special & batch["attention_mask"].bool()
    field_level = pretrain_module(dm, {})
    token_level = pretrain_module(dm, {"field_level_masking": False})
    ratio = token_level.cfg.text_mask_ratio
    hits_template = 0
    for seed in range(5):
        m = field_level.make_masks(batch, gen(seed))
        tm = m["text_mask"]
        assert not (tm & ~value).any()
        for i in range(tm.shape[0]):
            masked_fields = fields[i][tm[i]].unique()
            assert masked_fields.numel() == num_masked(dm.num_fields, field_level.cfg.text_mask_ratio)
            # whole value spans: every value token of a chosen field is masked
            chosen = torch.isin(fields[i], masked_fields) & value[i]
            assert torch.equal(tm[i], chosen)
        masked_ids = m["masked_input_ids"]
        assert (masked_ids[tm] == field_level.plm.mask_token_id).all() and torch.equal(masked_ids[~tm], batch["input_ids"][~tm])
        tab = m["tab_fields"]
        assert (tab.sum(1) == num_masked(dm.num_fields, field_level.cfg.tab_mask_ratio)).all()
        assert (m["masked_feature_ids"][tab] == field_level.id_model.mask_feature_id).all()
        assert torch.equal(m["masked_feature_ids"][~tab], batch["feature_ids"][~tab])

        t = token_level.make_masks(batch, gen(seed))["text_mask"]
        assert not (t & special).any()
        candidates = (~special & batch["attention_mask"].bool()).sum(1)
        assert torch.equal(t.sum(1), torch.tensor([num_masked(int(c), ratio) for c in candidates]))
        hits_template += int((t & template).sum())
    assert hits_template > 0, "token-level masking never touched a template token"


def test_masks_are_fresh_each_step_and_reproducible(dm, batch):
    module = pretrain_module(dm, {}, seed=3)
    a = module.make_masks(batch, module._generator(torch.device("cpu")))
    b = module.make_masks(batch, module._generator(torch.device("cpu")))
    assert torch.equal(a["text_mask"], b["text_mask"]) and torch.equal(a["tab_fields"], b["tab_fields"])
    module._trainer = SimpleNamespace(global_step=1, global_rank=0)  # what Lightning exposes mid-fit
    try:
        c = module.make_masks(batch, module._generator(torch.device("cpu")))
    finally:
        module._trainer = None
    assert not torch.equal(a["text_mask"], c["text_mask"]) or not torch.equal(a["tab_fields"], c["tab_fields"])


def test_pretraining_steps_lower_the_loss(dm, batch):
    module = pretrain_module(dm, {}).eval()  # eval: no dropout, so the same masks give comparable losses
    opt = torch.optim.AdamW(module.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        out = module.compute_losses(batch, gen(7))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append({k: float(out[k].detach()) for k in TERMS})
    first, last = losses[0], module.compute_losses(batch, gen(7))
    assert sum(last[k] for k in TERMS) < 0.9 * sum(first.values())
    for term in TERMS:  # each term learns, not only the easiest one
        assert float(last[term]) < first[term], term


def test_frozen_plm_gets_no_gradient_but_the_id_side_still_learns(dm, batch):
    module = pretrain_module(dm, {}, freeze_plm=True)
    plm_before = {k: v.clone() for k, v in module.plm.state_dict().items()}
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-2)
    out = module.compute_losses(batch, gen(3))
    out["loss"].backward()
    assert all(p.grad is None for p in module.plm.parameters())
    assert grads(module.id_model) and grads(module.icl) and grads(module.mtm)
    opt.step()
    assert all(torch.equal(v, plm_before[k]) for k, v in module.plm.state_dict().items())
    # a frozen encoder is a fixed target: Lightning's train() at epoch start must not turn on dropout
    module.train()
    module.on_train_epoch_start()
    assert not module.plm.training and module.id_model.training


# ----------------------------------------------------------------------------- checkpoint contract


@pytest.fixture(scope="module")
def aligned(dm, tmp_path_factory):
    """A 2-step Lightning fit of the full objective; returns (module, initial ID state, save dir)."""
    save_dir = tmp_path_factory.mktemp("aligned")
    module = pretrain_module(dm, {}, save_dir=str(save_dir), lr=1e-3)
    initial = {k: v.clone() for k, v in module.id_model.state_dict().items()}
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, default_root_dir=str(save_dir / "run"))
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 2
    return module, initial, save_dir


REFERENCE_SWITCHES = {"icl_projection": "layernorm", "noise_scope": "global", "nce": "corrected", "mtm_input": "masked_and_attended"}
OUR_SWITCHES = {"icl_projection": "l2", "noise_scope": "field", "nce": "negative_sampling", "mtm_input": "attended"}


@pytest.mark.parametrize("switches", [REFERENCE_SWITCHES, OUR_SWITCHES], ids=["reference", "ours"])
def test_alignment_switches_train_a_step_and_their_heads_round_trip(switches, dm, batch, tmp_path):
    module = pretrain_module(dm, switches, save_dir=str(tmp_path), lr=1e-3)
    icl_before = {k: v.clone() for k, v in module.icl.state_dict().items()}
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, default_root_dir=str(tmp_path / "run"))
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 1 and torch.isfinite(trainer.callback_metrics["pretrain/loss"])
    assert any(not torch.equal(v, icl_before[k]) for k, v in module.icl.state_dict().items()), "ICL head not trained"
    heads = load_heads(tmp_path)
    assert {k: heads["config"][k] for k in switches} == switches
    # the analyses rebuild the ICL head from the saved config: same weights, same projections
    icl = icl_head_from(heads, text_dim=module.plm.hidden_size, id_dim=module.id_model.representation_dim).eval()
    cls_state, v = torch.randn(3, module.plm.hidden_size), torch.randn(3, module.id_model.representation_dim)
    for rebuilt, trained in zip(icl.project(cls_state, v), module.icl.eval().project(cls_state, v)):
        assert torch.allclose(rebuilt, trained)


def test_checkpoint_round_trip(aligned, dm):
    module, initial, save_dir = aligned
    model, spec = load_id_model(save_dir)
    assert spec == id_spec(dm)
    saved, trained = model.state_dict(), module.id_model.state_dict()
    assert saved.keys() == trained.keys()
    for key in saved:
        assert torch.equal(saved[key], trained[key]), key
    assert any(not torch.equal(saved[k], initial[k]) for k in saved), "saved weights are the untrained ones"
    plm = load_aligned_plm(save_dir)
    assert plm.mask_token_id == module.plm.mask_token_id and plm.hidden_size == module.plm.hidden_size
    saved, trained = plm.state_dict(), module.plm.state_dict()
    assert saved.keys() == trained.keys()
    for key in saved:
        assert torch.equal(saved[key], trained[key]), key
    # same function, not only same tensors
    model.eval(), module.id_model.eval(), plm.eval(), module.plm.eval()
    b = BatchBuilder(dm.artifact, dm.text)(torch.arange(8))
    with torch.no_grad():
        assert torch.allclose(model(b["feature_ids"])[0], module.id_model(b["feature_ids"])[0])
        assert torch.allclose(plm(b["input_ids"], b["attention_mask"]), module.plm(b["input_ids"], b["attention_mask"]))


def compose_train(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


@pytest.mark.parametrize("stage_name", ["finetune_id", "finetune_plm", "finetune_joint"])
def test_finetune_strategies_from_aligned_checkpoint(stage_name, aligned, dm, tmp_path):
    import hydra

    _, _, save_dir = aligned
    cfg = compose_train(["plm=tiny_random", f"stage={stage_name}", f"stage.pretrained_dir={save_dir}"])
    module = hydra.utils.call(cfg.stage.builder)(cfg=cfg, stage=cfg.stage, datamodule=dm, stage_dir=tmp_path)
    expected = {"finetune_id": FinetuneIDModule, "finetune_plm": FinetunePLMModule, "finetune_joint": FinetuneJointModule}
    assert type(module) is expected[stage_name]
    # the aligned weights, not fresh ones, are what finetuning starts from
    if hasattr(module, "id_model") or hasattr(module, "model"):
        model = getattr(module, "id_model", None) or module.model
        ref = load_id_model(save_dir)[0].state_dict()
        assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())
    if hasattr(module, "plm"):
        ref = load_aligned_plm(save_dir).state_dict()
        assert all(torch.equal(v, ref[k]) for k, v in module.plm.state_dict().items())
    before = {k: v.clone() for k, v in module.state_dict().items()}
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=1, num_sanity_val_steps=0, default_root_dir=str(tmp_path))
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 1
    assert any(not torch.equal(v, before[k]) for k, v in module.state_dict().items() if v.is_floating_point())
    trainer.test(module, datamodule=dm)
    # metrics.json = the oracles' AUC / logloss of predictions.parquet, which vary (not a constant predictor)
    metrics = check_test_outputs(tmp_path, dm.artifact)
    assert metrics["num_test_rows"] == dm.artifact.num_test
    # ... and those predictions are the trained module's own outputs on the test rows
    start, stop = dm.artifact.split_ranges["test"]
    module.eval()
    with torch.no_grad():
        mine = torch.cat([torch.sigmoid(module(BatchBuilder(dm.artifact, dm.text)(rows)).float())
                          for rows in torch.arange(start, stop).split(64)]).numpy()
    saved = pl.read_parquet(tmp_path / "predictions.parquet")["prob"].to_numpy()
    assert abs(mine - saved).max() <= 1e-5
    preds = pl.read_parquet(tmp_path / "predictions.parquet")
    start, stop = dm.artifact.split_ranges["test"]
    assert preds["row_id"].to_list() == list(range(start, stop))
    assert preds["label"].to_list() == dm.artifact.labels[start:stop].tolist()
    assert preds["prob"].is_between(0, 1).all()


def test_aligned_id_model_for_another_dataset_is_refused(aligned, dm, tmp_path):
    from flip_ctr.train import build_finetune_id

    _, _, save_dir = aligned
    cfg = compose_train(["stage=finetune_id", f"stage.pretrained_dir={save_dir}"])
    other = SimpleNamespace(num_features=dm.num_features + 1, num_fields=dm.num_fields)
    with pytest.raises(ValueError, match="features"):
        build_finetune_id(cfg=cfg, stage=cfg.stage, datamodule=other, stage_dir=tmp_path)


CHILD = WITHOUT_TRANSFORMERS + textwrap.dedent(
    """
    import torch
    from flip_ctr.stages.checkpoints import load_id_model
    from flip_ctr.stages.finetune_id import FinetuneIDModule

    save_dir, ids_path, out_path = sys.argv[1:4]
    model, spec = load_id_model(save_dir)
    module = FinetuneIDModule(model).eval()
    again = FinetuneIDModule.from_pretrained(save_dir).eval()
    ids = torch.load(ids_path)
    with torch.no_grad():
        probs = torch.sigmoid(module({"feature_ids": ids}))
        probs_again = torch.sigmoid(again({"feature_ids": ids}))
    torch.save({"probs": probs, "again": probs_again}, out_path)
    try:
        import transformers  # noqa: F401
        blocked = False
    except ImportError:
        blocked = True
    print(json.dumps({"blocked": blocked, "plm_imported": "flip_ctr.models.plm" in sys.modules,
                      "transformers_loaded": sorted(m for m in sys.modules if m.startswith("transformers.")),
                      "name": spec["name"]}))
    """
)


def test_flip_id_needs_no_transformers(aligned, batch, tmp_path):
    _, _, save_dir = aligned
    model, _ = load_id_model(save_dir)
    module = FinetuneIDModule(model).eval()
    with torch.no_grad():
        expected = torch.sigmoid(module({"feature_ids": batch["feature_ids"]}))
    torch.save(batch["feature_ids"], tmp_path / "ids.pt")
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(save_dir), str(tmp_path / "ids.pt"), str(tmp_path / "out.pt")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"blocked": True, "plm_imported": False, "transformers_loaded": [], "name": "dcnv2"}
    out = torch.load(tmp_path / "out.pt")
    assert out["probs"].shape == expected.shape
    assert torch.allclose(out["probs"], expected, atol=1e-6, rtol=0)
    assert torch.allclose(out["again"], expected, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- FLIP (joint) and FLIP_PLM


def test_joint_loss_alpha_and_its_gradient(dm, batch):
    module = FinetuneJointModule(tiny_id(dm), tiny_plm(), lr_id=0.5, lr_plm=1e-3, alpha_init=0.3).eval()
    assert torch.isclose(module.alpha, torch.tensor(0.3))
    labels = batch["labels"]
    loss = module.training_step(batch, 0)
    id_logit = module.id_model(batch["feature_ids"])[1]
    plm_logit = module.plm_head(module.plm(batch["input_ids"], batch["attention_mask"])[:, 0]).squeeze(-1)
    a = torch.sigmoid(module.alpha_logit)
    fused = a * id_logit + (1 - a) * plm_logit
    bce = F.binary_cross_entropy_with_logits
    by_hand = bce(fused, labels) + bce(id_logit, labels) + bce(plm_logit, labels)
    assert torch.allclose(loss, by_hand, atol=1e-6)
    assert torch.allclose(module(batch), fused, atol=1e-6)
    # dL/dα_logit: only the fused term depends on α
    loss.backward()
    with torch.no_grad():
        analytic = ((torch.sigmoid(fused) - labels) * (id_logit - plm_logit)).mean() * a * (1 - a)
    assert module.alpha_logit.grad is not None and module.alpha_logit.grad.abs() > 0
    assert torch.allclose(module.alpha_logit.grad, analytic, atol=1e-6)
    # every parameter is optimised exactly once, α with the ID-side learning rate
    opt = module.configure_optimizers()
    grouped = [p for g in opt.param_groups for p in g["params"]]
    assert len(grouped) == len({id(p) for p in grouped}) == len(list(module.parameters()))
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lr_of[id(module.alpha_logit)] == 0.5 and lr_of[id(next(module.plm.parameters()))] == 1e-3
    start = float(module.alpha)
    for _ in range(25):  # a large step size must not push α out of (0, 1)
        opt.zero_grad()
        module.training_step(batch, 0).backward()
        opt.step()
        assert 0.0 < float(module.alpha) < 1.0
    assert float(module.alpha) != start


def test_joint_alpha_has_its_own_learning_rate(dm, batch):
    module = FinetuneJointModule(tiny_id(dm), tiny_plm(), lr_id=1e-3, lr_plm=1e-4, lr_alpha=0.2)
    lr_of = {id(p): g["lr"] for g in module.configure_optimizers().param_groups for p in g["params"]}
    assert lr_of[id(module.alpha_logit)] == 0.2
    assert lr_of[id(next(module.id_model.parameters()))] == 1e-3


def test_joint_warm_start_loads_the_finetuned_single_models(dm, batch, tmp_path):
    """warm_start takes the ID model from a FLIP_ID checkpoint and PLM + head from a FLIP_PLM one."""
    id_module = FinetuneIDModule(tiny_id(dm, seed=1))
    plm_module = FinetunePLMModule(tiny_plm(seed=2))
    for module, name in ((id_module, "id.ckpt"), (plm_module, "plm.ckpt")):
        torch.save({"state_dict": module.state_dict()}, tmp_path / name)
    joint = FinetuneJointModule(tiny_id(dm, seed=3), tiny_plm(seed=4)).eval()
    joint.warm_start(id_checkpoint=tmp_path / "id.ckpt", plm_checkpoint=tmp_path / "plm.ckpt")
    with torch.no_grad():
        fused, id_logit, plm_logit = joint.logits(batch)
        assert torch.allclose(id_logit, id_module.eval()(batch), atol=1e-6)
        assert torch.allclose(plm_logit, plm_module.eval()(batch), atol=1e-6)


def test_joint_warm_start_needs_both_single_strategies_first(tmp_path):
    from flip_ctr.train import _finetuned_checkpoints

    for name in ("finetune_id", "finetune_plm"):
        (tmp_path / name / "checkpoints").mkdir(parents=True)
        (tmp_path / name / "checkpoints" / "best.ckpt").write_bytes(b"x")
    found = _finetuned_checkpoints(tmp_path, ["finetune_id", "finetune_plm", "finetune_joint"], "finetune_joint")
    assert found["plm_checkpoint"].endswith("finetune_plm/checkpoints/best.ckpt")
    with pytest.raises(ValueError, match="finetune_plm to run before finetune_joint"):
        _finetuned_checkpoints(tmp_path, ["finetune_id", "finetune_joint", "finetune_plm"], "finetune_joint")


def test_plm_only_loss_is_bce_on_cls_head(dm, batch):
    module = FinetunePLMModule(tiny_plm(), lr_plm=1e-3).eval()
    loss = module.training_step(batch, 0)
    cls_state = module.plm(batch["input_ids"], batch["attention_mask"])[:, 0]
    expected = F.binary_cross_entropy_with_logits(module.plm_head(cls_state).squeeze(-1), batch["labels"])
    assert torch.allclose(loss, expected, atol=1e-6)
    loss.backward()
    assert grads(module.plm) and grads(module.plm_head)


def test_pretraining_optimizer_groups_and_cosine_schedule(dm):  # noqa: F811
    """AdamW groups (paper §V-A4, our id_lr): the PLM at lr, the ID model and heads at id_lr; no
    weight decay on biases and norms; linear warm-up then cosine decay to 0 over the run, by hand."""
    from types import SimpleNamespace

    module = pretrain_module(dm, {}, lr=5e-5, id_lr=1e-3, weight_decay=0.01, warmup_ratio=0.1)
    module._trainer = SimpleNamespace(estimated_stepping_batches=100)
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "step"
    names = {id(p): n for n, p in module.named_parameters()}
    seen = set()
    for group in optimizer.param_groups:
        for p in group["params"]:
            name = names[id(p)]
            seen.add(name)
            assert group["initial_lr"] == (5e-5 if name.startswith("plm.") else 1e-3), name  # "lr": after the schedule
            decays = p.ndim >= 2 and "norm" not in name.lower()
            assert group["weight_decay"] == (0.01 if decays else 0.0), name
    assert seen == {n for n, p in module.named_parameters() if p.requires_grad}  # every trained parameter, once
    assert any(n.startswith("plm.") for n in seen) and any(n.startswith("id_model.") for n in seen)
    factors = []
    for _ in range(100):
        factors.append(optimizer.param_groups[0]["lr"] / optimizer.param_groups[0]["initial_lr"])
        optimizer.step()
        scheduler.step()
    expected = [(s + 1) / 10 if s < 10 else 0.5 * (1 + math.cos(math.pi * (s - 10) / 90)) for s in range(100)]
    assert factors == pytest.approx(expected, abs=1e-6)  # the schedule takes the cosine in float32
    frozen = pretrain_module(dm, {}, freeze_plm=True)
    frozen._trainer = SimpleNamespace(estimated_stepping_batches=10)
    frozen_params = [p for g in frozen.configure_optimizers()["optimizer"].param_groups for p in g["params"]]
    assert not any(p is q for p in frozen_params for q in frozen.plm.parameters())  # a frozen PLM is not optimised


def test_lazy_adamw_pretraining_updates_only_the_rows_of_the_batch(dm, batch):
    """stage.optimizer=lazy_adamw: the ID tables and MTM's output table get sparse gradients; after
    one step every used row and every dense parameter equals AdamW's, while the unused rows of the
    sparse tables keep their values (AdamW's decoupled decay shrinks them by 1 - lr * wd)."""
    from types import SimpleNamespace

    kw = dict(freeze_plm=True, id_lr=1e-2, weight_decay=0.1)
    dense, lazy = pretrain_module(dm, {}, **kw).eval(), pretrain_module(dm, {}, optimizer="lazy_adamw", **kw).eval()
    start = {k: v.clone() for k, v in dense.state_dict().items()}
    assert all(torch.equal(v, lazy.state_dict()[k]) for k, v in start.items())
    tables = ["id_model.embedding.weight", "mtm.output_embedding.weight"]
    used_rows = {}
    for module in (dense, lazy):
        module._trainer = SimpleNamespace(estimated_stepping_batches=10)
        optimizer = module.configure_optimizers()["optimizer"]
        module.compute_losses(batch, gen(3))["loss"].backward()
        params = dict(module.named_parameters())
        assert [params[t].grad.is_sparse for t in tables] == [module is lazy] * 2
        if module is lazy:
            used_rows = {t: params[t].grad.coalesce().indices()[0] for t in tables}
        optimizer.step()
    after_dense, after_lazy = dense.state_dict(), lazy.state_dict()
    for name in tables:
        used = torch.zeros(len(start[name]), dtype=torch.bool)
        used[used_rows[name]] = True
        assert 0 < used.sum() < len(used), name
        torch.testing.assert_close(after_lazy[name][used], after_dense[name][used], rtol=0, atol=1e-6)
        assert torch.equal(after_lazy[name][~used], start[name][~used]), name
        torch.testing.assert_close(after_dense[name][~used], start[name][~used] * (1 - 1e-2 * 0.1), rtol=0, atol=1e-7)
    assert set(batch["feature_ids"].unique().tolist()) <= set(used_rows["id_model.embedding.weight"].tolist())
    for name, value in after_dense.items():
        if name not in tables:
            torch.testing.assert_close(after_lazy[name], value, rtol=0, atol=1e-6, msg=name)
    with pytest.raises(ValueError, match="'adamw'.*'lazy_adamw'.*got 'lazy_adam'"):
        pretrain_module(dm, {}, optimizer="lazy_adam")
