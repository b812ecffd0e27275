"""The Table II PLM/hybrid baselines (src/flip_ctr/baselines, conf/baseline).

CTR-BERT's towers see only their own side's fields; PTab's MLM loss goes down; P5's click
probability is the softmax of the yes/no scores; CTRL's served model holds no PLM; and every
baseline runs from `flip-ctr train -m baseline=...` and writes the metrics.json that
`flip-ctr report` tables. Tiny random BERT/T5 on the ML-100K fixture of test_datamodule.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from flip_ctr.baselines.common import fields_of_side, select_fields
from flip_ctr.baselines.ctr_bert import CTRBertModule
from flip_ctr.baselines.p5 import P5Module, PromptBuilder, p5_click_probability
from flip_ctr.baselines.ptab import PTabMLMModule, bert_mask
from flip_ctr.data.datamodule import BatchBuilder
from flip_ctr.data.text import TextPieces
from flip_ctr.models.plm import PLMEncoder
from conftest import WITHOUT_TRANSFORMERS
from oracles import check_test_outputs
from test_datamodule import make_dm, write_ml100k_fixture

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
BASELINES = ("ctr_bert", "ptab", "p5", "p5_random", "ctrl", "plm_only")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_ml100k_fixture(tmp_path_factory.mktemp("baselines") / "ml-100k")


@pytest.fixture(scope="module")
def dm(data_dir, minilm_tokenizer):
    return make_dm(data_dir, data_dir.parent / "cache", minilm_tokenizer, batch_size=32, eval_batch_size=64)


@pytest.fixture(scope="module")
def batch(dm):
    return BatchBuilder(dm.artifact, dm.text)(torch.arange(48))


def tiny_plm(seed: int = 0) -> PLMEncoder:
    torch.manual_seed(seed)
    return PLMEncoder.random_like("minilm_l6", hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def local_values(dm, rows: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(dm.artifact.value_ids[rows.numpy()], dtype=torch.long)


def text_batch(dm, local: torch.Tensor) -> dict:
    t = dm.text.assemble(local)
    return {"input_ids": t.input_ids, "attention_mask": t.attention_mask, "token_field_ids": t.token_field_ids}


# ----------------------------------------------------------------------------- configs


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


def test_every_baseline_composes_to_a_stage_with_a_builder():
    import hydra

    assert {p.stem for p in (CONF / "baseline").glob("*.yaml")} == set(BASELINES)
    labels = {}
    for name in BASELINES:
        cfg = compose([f"baseline={name}"])
        assert callable(hydra.utils.instantiate(cfg.stage.builder)), name
        assert cfg.task_name == "baselines" and cfg.ablation.name == "-"
        labels[name] = cfg.stage.name
    assert labels == {"ctr_bert": "CTR-BERT", "ptab": "PTab", "p5": "P5", "p5_random": "P5 (random-init T5)",
                      "ctrl": "CTRL", "plm_only": "PLM-only"}
    # PLM-only is FLIP_PLM's module from plain weights; P5 swaps the PLM for T5
    plm_only = compose(["baseline=plm_only"])
    assert plm_only.stage.builder._target_ == "flip_ctr.train.build_finetune_plm" and plm_only.stage.pretrained_dir is None
    assert compose(["baseline=p5"]).plm.name_or_path == "google-t5/t5-small"
    # without a baseline, train composes as before
    assert compose([]).stage.name == "ctr" and compose([]).task_name == "train"


# ----------------------------------------------------------------------------- CTR-BERT


def test_sides_of_the_movielens_schema(dm):
    schema = dm.space.schema
    user, item = fields_of_side(schema, "user"), fields_of_side(schema, "item")
    assert [schema.fields[f].name for f in user] == ["user id", "age", "gender", "occupation", "zip code"]
    assert [schema.fields[f].name for f in item] == ["movie id", "movie title", "release year", "genre"]


def test_select_fields_equals_the_side_text_built_alone(dm, minilm_tokenizer):
    """A tower's input is exactly "[CLS] <its fields' sentences> [SEP]", as if only those fields existed."""
    space = dm.space
    local = local_values(dm, torch.arange(40))
    full = text_batch(dm, local)
    for side in ("user", "item"):
        fields = fields_of_side(space.schema, side)
        keep = torch.zeros(space.num_fields, dtype=torch.bool)
        keep[fields] = True
        ids, mask = select_fields(full["input_ids"], full["attention_mask"], full["token_field_ids"], keep,
                                  dm.text.cls_id, dm.text.sep_id, dm.text.pad_id)
        alone = TextPieces([space.schema.field_names[f] for f in fields], [space.values[f] for f in fields], minilm_tokenizer)
        expected = alone.assemble(local[:, fields])
        assert torch.equal(ids, expected.input_ids) and torch.equal(mask, expected.attention_mask)


def ctr_bert(dm) -> CTRBertModule:
    schema = dm.space.schema
    return CTRBertModule(tiny_plm(1), tiny_plm(2), fields_of_side(schema, "user"), fields_of_side(schema, "item"),
                         num_fields=dm.num_fields, cls_id=dm.text.cls_id, sep_id=dm.text.sep_id, pad_id=dm.text.pad_id).eval()


@pytest.mark.parametrize("changed_side", ["item", "user"])
def test_ctr_bert_towers_see_only_their_own_side(changed_side, dm):
    module = ctr_bert(dm)
    assert not {id(p) for p in module.user_plm.parameters()} & {id(p) for p in module.item_plm.parameters()}
    local = local_values(dm, torch.arange(32))
    fields = fields_of_side(dm.space.schema, changed_side)
    other = local.clone()
    for f in fields:  # every field of that side gets another (non-OOV) value
        num_values = len(dm.space.values[f])
        other[:, f] = (local[:, f] % (num_values - 1)) + 1
        other[:, f] = torch.where(other[:, f] == local[:, f], other[:, f] % (num_values - 1) + 1, other[:, f])
    assert (other != local).any(dim=1).all()
    with torch.no_grad():
        u1, i1 = module.towers(text_batch(dm, local))
        u2, i2 = module.towers(text_batch(dm, other))
        l1, l2 = module(text_batch(dm, local)), module(text_batch(dm, other))
    same, changed = ((u1, u2), (i1, i2)) if changed_side == "item" else ((i1, i2), (u1, u2))
    assert torch.equal(*same)  # bit-identical: the tower never saw the other side's tokens
    assert (changed[0] - changed[1]).abs().amax(dim=1).gt(1e-4).all()
    assert not torch.allclose(l1, l2)  # ...and the click logit combines both


def test_ctr_bert_trains_both_towers_and_the_head(dm, batch):
    module = ctr_bert(dm).train()
    opt = module.configure_optimizers()
    assert [g["lr"] for g in opt.param_groups] == [module.lr_plm, module.lr_head]
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(module.parameters()))
    loss = module.training_step(batch, 0)
    loss.backward()
    for part in (module.user_plm, module.item_plm, module.head):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())


def test_ctr_bert_refuses_one_shared_tower(dm):
    plm = tiny_plm()
    with pytest.raises(ValueError, match="separate"):
        CTRBertModule(plm, plm, [0], [1], num_fields=dm.num_fields, cls_id=101, sep_id=102)


# ----------------------------------------------------------------------------- PTab


def test_bert_masking_80_10_10(dm, minilm_tokenizer):
    local = local_values(dm, torch.arange(400) % dm.artifact.num_fit)
    b = text_batch(dm, local)
    g = torch.Generator().manual_seed(0)
    corrupted, selected = bert_mask(b["input_ids"], b["attention_mask"], b["token_field_ids"],
                                    minilm_tokenizer.mask_token_id, len(minilm_tokenizer), 0.15, g)
    special = b["token_field_ids"] < 0
    assert not (selected & special).any()  # [CLS]/[SEP]/padding are never chosen
    assert torch.equal(corrupted[~selected], b["input_ids"][~selected])
    share = selected.sum() / (~special).sum()
    assert 0.13 < share < 0.17
    masked = (corrupted[selected] == minilm_tokenizer.mask_token_id).float().mean()
    kept = (corrupted[selected] == b["input_ids"][selected]).float().mean()
    assert 0.75 < masked < 0.85 and 0.06 < kept < 0.15


def test_ptab_pretraining_lowers_the_mlm_loss(batch):
    torch.manual_seed(0)
    module = PTabMLMModule(tiny_plm(), lr=5e-3, weight_decay=0.0)
    opt = module.configure_optimizers()

    def loss_at(step: int) -> torch.Tensor:
        return module.mlm_loss(batch, torch.Generator().manual_seed(step))[0]

    with torch.no_grad():
        module.eval()
        before = torch.stack([loss_at(100 + k) for k in range(3)]).mean()
    module.train()
    for step in range(12):
        opt.zero_grad()
        loss = loss_at(step)
        loss.backward()
        opt.step()
    with torch.no_grad():
        module.eval()
        after = torch.stack([loss_at(100 + k) for k in range(3)]).mean()
    assert after < before - 1.0, (float(before), float(after))  # from ~ln(30522) ≈ 10.3 towards the fixture's text


def test_ptab_head_is_tied_to_the_word_embeddings(batch):
    module = PTabMLMModule(tiny_plm())
    loss, _ = module.mlm_loss(batch, torch.Generator().manual_seed(0))
    loss.backward()
    emb = module.plm.model.get_input_embeddings().weight
    assert emb.grad is not None and emb.grad.abs().sum() > 0
    assert not any(p.shape == emb.shape for p in module.head.parameters())  # no second vocabulary matrix


# ----------------------------------------------------------------------------- P5


def tiny_t5(tokenizer):
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    config = T5Config(vocab_size=len(tokenizer), d_model=16, d_ff=32, d_kv=8, num_heads=2, num_layers=1,
                      num_decoder_layers=1, pad_token_id=0, eos_token_id=tokenizer.sep_token_id, decoder_start_token_id=0)
    return T5ForConditionalGeneration(config).eval()


@pytest.fixture(scope="module")
def p5(dm, minilm_tokenizer):
    schema = dm.space.schema
    prompts = PromptBuilder(schema.field_names, dm.space.values, fields_of_side(schema, "user"), fields_of_side(schema, "item"),
                            minilm_tokenizer, templates=["user: {user} item: {item} yes or no?", "{item} | {user}"])
    yes, no = (minilm_tokenizer.convert_tokens_to_ids(w) for w in ("yes", "no"))
    return P5Module(tiny_t5(minilm_tokenizer), prompts, yes, no, value_table=dm.artifact.value_ids, eval_template=0)


def test_p5_prompts_fill_the_templates(p5, dm, minilm_tokenizer):
    local = local_values(dm, torch.arange(3))
    schema, values = dm.space.schema, dm.space.values

    def sentences(r: int, side: str) -> str:
        return " ".join(f"{schema.fields[f].name} is {values[f][int(local[r, f])]}." for f in fields_of_side(schema, side))

    for template, text in ((0, "user: {u} item: {i} yes or no?"), (1, "{i} | {u}")):
        ids, mask = p5.prompts.assemble(local, template)
        for r in range(3):
            expected = minilm_tokenizer(text.format(u=sentences(r, "user"), i=sentences(r, "item")), add_special_tokens=False)
            assert ids[r][mask[r].bool()].tolist() == expected["input_ids"] + [minilm_tokenizer.sep_token_id], (template, r)
    # a batch mixing templates gives each row its own template's prompt
    mixed, mixed_mask = p5.prompts.assemble(local, torch.tensor([1, 0, 1]))
    single, single_mask = p5.prompts.assemble(local[1:2], 0)
    assert mixed[1][mixed_mask[1].bool()].tolist() == single[0][single_mask[0].bool()].tolist()


def test_p5_probability_is_the_softmax_of_the_yes_no_scores(p5, batch):
    with torch.no_grad():
        scores = p5.yes_no_scores(batch, 0)
        prob = torch.sigmoid(p5(batch))
    assert scores.shape == (batch["labels"].shape[0], 2)
    assert torch.allclose(prob, torch.softmax(scores, dim=-1)[:, 0], atol=1e-6)
    assert torch.allclose(prob, p5_click_probability(scores), atol=1e-6)
    # monotone: more "yes" → more click, more "no" → less
    s_yes = torch.linspace(-5, 5, 21)
    up = p5_click_probability(torch.stack([s_yes, torch.zeros(21)], -1))
    down = p5_click_probability(torch.stack([torch.zeros(21), s_yes], -1))
    assert (up.diff() > 0).all() and (down.diff() < 0).all()
    assert torch.allclose(up + down, torch.ones(21))  # only the difference of the two scores matters
    assert torch.allclose(p5_click_probability(torch.stack([s_yes + 3.0, torch.full((21,), 3.0)], -1)), up)


def test_p5_mean_over_templates_and_training(p5, batch):
    p5.eval_template = "mean"
    try:
        with torch.no_grad():
            mean = p5(batch)
            each = [P5Module.click_logit(p5.yes_no_scores(batch, t)) for t in range(2)]
        assert torch.allclose(mean, torch.stack(each).mean(0), atol=1e-6)
    finally:
        p5.eval_template = 0
    module = P5Module(p5.model, p5.prompts, p5.yes_id, p5.no_id, value_table=p5.value_table, lr=1e-2).train()
    opt = module.configure_optimizers()
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = module.training_step(batch, 0)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


# ----------------------------------------------------------------------------- CLI: every baseline, CTRL serving


def quiet_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HYDRA_FULL_ERROR": "1"}


@pytest.fixture(scope="module")
def sweep(data_dir, tmp_path_factory):
    """One `flip-ctr train -m baseline=...` multirun over the fixture (tiny random PLM / T5)."""
    root = tmp_path_factory.mktemp("sweep")
    common = [f"data.data_dir={data_dir}", f"data.cache_dir={root / 'cache'}", f"paths.log_dir={root / 'logs'}",
              "seed=1", "stage.max_epochs=1", "stage.batch_size=64", "logger=csv", "num_threads=1"]
    tiny_t5 = "plm.random_init={d_model:16,d_ff:32,d_kv:8,num_heads:2,num_layers:1,num_decoder_layers:1}"
    for args in (["-m", "baseline=ctr_bert,ptab,ctrl,plm_only", "plm=tiny_random"], ["baseline=p5_random", tiny_t5]):
        proc = subprocess.run([sys.executable, "-m", "flip_ctr.cli", "train", *args, *common], capture_output=True, text=True,
                              timeout=400, cwd=root, env=quiet_env())
        assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-5000:])
    runs = {json.loads(p.read_text())["stage"]: p.parent for p in (root / "logs").rglob("metrics.json")}
    return root, runs


def test_every_baseline_runs_from_the_cli_and_reports(sweep, dm):
    root, runs = sweep
    assert set(runs) == {"CTR-BERT", "PTab", "CTRL", "PLM-only", "P5 (random-init T5)"}
    for name, run in runs.items():
        m = check_test_outputs(run, dm.artifact)  # metrics.json = the oracles on non-constant predictions
        assert m["num_test_rows"] == dm.artifact.num_test and m["seed"] == 1 and m["ablation"] == "-"
        assert (run / "predictions.parquet").is_file()
        assert "/baselines/" in str(run)  # task_name: baselines
    assert (runs["PTab"] / "mlm" / "metrics.csv").is_file()  # the MLM phase ran and logged
    assert (runs["CTRL"] / "align" / "metrics.csv").is_file()
    from flip_ctr.report import collect, summarize, to_markdown

    table = to_markdown(summarize(collect([root / "logs"])))
    for label in runs:
        assert f"| {label} | - | 1 |" in table


CHILD = WITHOUT_TRANSFORMERS + textwrap.dedent(
    """
    import torch
    from flip_ctr.stages.checkpoints import load_id_model
    model, spec = load_id_model(sys.argv[1])
    ids = torch.zeros(2, spec["num_fields"], dtype=torch.long)
    with torch.no_grad():
        v, logit = model(ids)
    print(json.dumps({"name": spec["name"], "logit_shape": list(logit.shape),
                      "transformers_loaded": sorted(m for m in sys.modules if m.startswith("transformers."))}))
    """
)


def test_ctrl_serves_the_id_model_alone(sweep):
    from flip_ctr.train import build_id_model

    _, runs = sweep
    run = runs["CTRL"]
    served = run / "served" / "id_model.pt"
    payload = torch.load(served, map_location="cpu", weights_only=True)  # plain tensors and a spec dict
    cfg = OmegaConf.load(run / "config.yaml")

    class Data:
        num_features, num_fields = payload["spec"]["num_features"], payload["spec"]["num_fields"]

    reference = build_id_model(cfg, Data())
    assert payload["spec"]["name"] == "dcnv2"
    assert set(payload["state_dict"]) == set(reference.state_dict())  # the ID model's tensors, nothing else
    plm_words = ("plm", "embeddings.word_embeddings", "encoder.layer", "attention", "icl")
    assert not [k for k in payload["state_dict"] if any(w in k for w in plm_words)]
    # the Lightning checkpoint of the served stage holds only the ID model too
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["state_dict"] and all(k.startswith("model.") for k in ckpt["state_dict"])
    # and it loads and predicts with transformers unimportable
    proc = subprocess.run([sys.executable, "-c", CHILD, str(served)], capture_output=True, text=True, timeout=120,
                          env=quiet_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"name": "dcnv2", "logit_shape": [2], "transformers_loaded": []}
    # the served weights are the evaluated ones (the best checkpoint)
    best = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}
    assert all(torch.equal(best[k], v) for k, v in payload["state_dict"].items())


def test_ctrl_alignment_updates_the_id_model(dm, batch):
    from flip_ctr.baselines.ctrl import CTRLAlignModule
    from flip_ctr.models.id import build_id_model

    torch.manual_seed(0)
    id_model = build_id_model(name="dcnv2", num_features=dm.num_features, num_fields=dm.num_fields, embedding_dim=8,
                              dnn_hidden_units=[16, 16], num_cross_layers=1)
    module = CTRLAlignModule(id_model, tiny_plm(), proj_dim=16, temperature=0.1, lr_plm=1e-3, lr_id=1e-2)
    opt = module.configure_optimizers()
    start = {k: v.clone() for k, v in id_model.state_dict().items()}
    with torch.no_grad():
        before = module.eval().contrastive_loss(batch).item()
    module.train()
    for _ in range(45):
        opt.zero_grad()
        module.contrastive_loss(batch).backward()
        opt.step()
    with torch.no_grad():
        after = module.eval().contrastive_loss(batch).item()
    assert after < before - 0.5, (before, after)
    assert any(not torch.equal(v, start[k]) for k, v in id_model.state_dict().items() if v.is_floating_point())
    assert L.LightningModule in type(module).__mro__
