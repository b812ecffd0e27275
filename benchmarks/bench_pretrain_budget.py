#!/usr/bin/env python
"""Benchmark: where a CPU-scale pretraining step spends its time, for the paper's whole-row text
encoding and for ``text_encoding=per_field``. Not a test: writes
``results/benchmarks/pretrain_budget.{json,md}``.

Three variants: the paper's path (``row`` + ``mlm_vocabulary=full``), per-field states, and
per-field states with the MLM softmax over the text's own tokens (``mlm_vocabulary=text``).
Real ML-1M batches (the datamodule's collate), all-MiniLM-L6-v2 cut to ``--keep-layers`` and
frozen (the CPU scale), DCNv2 ID model, the method's default alignment switches. Each part of
``AlignmentPretrainModule.compute_losses`` is timed alone over the same ``--steps`` batches
(forward + backward where the part has trainable inputs), then the whole training step
(losses + backward + AdamW) is timed as the total the parts should add up to:

- data: the collate function (row indices → ids, text tokens, masks layout);
- masks: field choice + masked copies of both modalities;
- text: the frozen PLM on [text; masked text] (row), or assembling both from the precomputed
  sentence states (per_field);
- id_model: v and v̂ (forward + backward of a unit-weight sum);
- mlm / mtm / icl: each head's loss, forward + backward (MLM includes the vocabulary projection).

    python benchmarks/bench_pretrain_budget.py            # ~3 min at 1 thread
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command_line, finish_run, fmt_table, header_lines, loadavg, machine_info, now  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ml1m")
    parser.add_argument("--data-subdir", default="ml-1m")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--keep-layers", type=int, default=1)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out-name", default="pretrain_budget")
    parser.add_argument("--out-dir", default=None)
    return parser.parse_args()


def timed(fn, repeats: list) -> float:
    """Median seconds of ``fn(item)`` over ``repeats`` (one call per item)."""
    times = []
    for item in repeats:
        start = time.perf_counter()
        fn(item)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build(args, text_encoding: str, mlm_vocabulary: str):
    import torch

    from flip_ctr.data.datamodule import CTRDataModule
    from flip_ctr.models.id import build_id_model
    from flip_ctr.models.plm import PLMEncoder, load_tokenizer
    from flip_ctr.stages.pretrain import AlignmentPretrainModule

    dm = CTRDataModule(args.dataset, data_subdir=args.data_subdir, tokenizer=load_tokenizer("minilm_l6"), batch_size=args.batch_size)
    dm.setup()
    plm = PLMEncoder.from_pretrained("minilm_l6", keep_layers=args.keep_layers, pooling="mean")
    id_model = build_id_model("dcnv2", num_features=dm.num_features, num_fields=dm.num_fields)
    module = AlignmentPretrainModule(
        id_model=id_model,
        plm=plm,
        feature_frequencies=torch.as_tensor(dm.artifact.feature_frequencies, dtype=torch.float),
        field_offsets=dm.artifact.space.field_offsets,
        freeze_plm=True,
        text_encoding=text_encoding,
        text_pieces=dm.text,
        alignment={"mlm_vocabulary": mlm_vocabulary},
    )
    module.plm.eval()
    return dm, module


def measure(args, text_encoding: str, mlm_vocabulary: str) -> dict:
    import torch

    start = time.perf_counter()
    dm, module = build(args, text_encoding, mlm_vocabulary)
    setup_s = time.perf_counter() - start
    if text_encoding == "per_field":
        start = time.perf_counter()
        module.field_states()
        setup_s += time.perf_counter() - start
    collate = dm.train_dataloader().collate_fn
    generator = torch.Generator().manual_seed(0)
    row_batches = [torch.randint(0, dm.artifact.split_ranges["train"][1], (args.batch_size,), generator=generator) for _ in range(args.steps)]
    batches = [collate(rows) for rows in row_batches]
    masks = [module.make_masks(b, torch.Generator().manual_seed(i)) for i, b in enumerate(batches)]
    pairs = list(zip(batches, masks))
    texts = [module.encode_text(b, m) for b, m in pairs]
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-3)

    def backward(loss):
        loss.backward()
        module.zero_grad(set_to_none=True)

    def id_part(item):
        b, m = item
        backward(module.id_model(b["feature_ids"])[0].sum() + module.id_model(m["masked_feature_ids"])[0].sum())

    def mlm_part(item):
        (b, m), (_, w_masked) = item
        v = module.id_model(b["feature_ids"])[0].detach()
        backward(module.mlm.loss(w_masked, v, m["text_mask"], b["input_ids"])[0])

    def mtm_part(item):
        (b, m), (w, _) = item
        v_masked = module.id_model(m["masked_feature_ids"])[0].detach()
        backward(module.mtm.loss(v_masked, w, b["attention_mask"], m["tab_fields"], b["feature_ids"], generator=torch.Generator().manual_seed(1))[0])

    def icl_part(item):
        (b, _), (w, _) = item
        v = module.id_model(b["feature_ids"])[0].detach()
        backward(module.icl(module.plm.sentence_embedding(w, b["attention_mask"]), v))

    def step(item):
        b, i = item
        losses = module.compute_losses(b, torch.Generator().manual_seed(i))
        losses["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    module.train()
    module.plm.eval()
    parts = {
        "data": timed(collate, row_batches),
        "masks": timed(lambda b: module.make_masks(b, torch.Generator().manual_seed(0)), batches),
        "text": timed(lambda bm: module.encode_text(*bm), pairs),
        "id_model": timed(id_part, pairs),
        "mlm": timed(mlm_part, list(zip(pairs, texts))),
        "mtm": timed(mtm_part, list(zip(pairs, texts))),
        "icl": timed(icl_part, list(zip(pairs, texts))),
    }
    total = timed(step, list(zip(batches, range(len(batches)))))
    return {
        "text_encoding": text_encoding,
        "mlm_vocabulary": mlm_vocabulary,
        "setup_s": setup_s,
        "parts_s": parts,
        "step_s": total,
        "step_plus_data_s": total + parts["data"],
        "samples_per_s": args.batch_size / (total + parts["data"]),
        "seq_len": int(batches[0]["input_ids"].shape[1]),
    }


def markdown(res: dict) -> str:
    lines = header_lines("Where a CPU-scale pretraining step spends its time", res)
    a = res["args"]
    lines += [
        "",
        f"ML-1M batches of {a['batch_size']} rows, all-MiniLM-L6-v2 cut to {a['keep_layers']} layer(s), frozen; DCNv2; "
        f"the method's default switches; median of {a['steps']} steps at {a['threads']} torch thread(s). "
        "Parts are timed alone (forward + backward where they train); `step` is losses + backward + AdamW, "
        "without the data part.",
        "",
    ]
    names = list(res["runs"][0]["parts_s"])
    headers = ["text_encoding", "mlm_vocabulary", "setup s"] + [f"{n} ms" for n in names] + ["step ms", "step + data ms", "samples/s"]
    rows = []
    for run in res["runs"]:
        rows.append(
            [run["text_encoding"], run["mlm_vocabulary"], f"{run['setup_s']:.1f}"]
            + [f"{1000 * run['parts_s'][n]:.0f}" for n in names]
            + [f"{1000 * run['step_s']:.0f}", f"{1000 * run['step_plus_data_s']:.0f}", f"{run['samples_per_s']:.0f}"]
        )
    lines.append(fmt_table(headers, rows))
    base = res["runs"][0]
    lines.append("")
    for run in res["runs"][1:]:
        ratio = base["step_plus_data_s"] / run["step_plus_data_s"]
        lines.append(f"- {run['text_encoding']} + {run['mlm_vocabulary']}: {ratio:.1f}x the samples/s of {base['text_encoding']} + {base['mlm_vocabulary']}")
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    import torch

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    res = {"command": command_line(), "date": now(), "machine": machine_info(), "args": vars(args)}
    res["machine"]["loadavg_start"] = loadavg()
    res["runs"] = [measure(args, *variant) for variant in (("row", "full"), ("per_field", "full"), ("per_field", "text"))]
    finish_run(res, t_start, markdown, args)


if __name__ == "__main__":
    main()
