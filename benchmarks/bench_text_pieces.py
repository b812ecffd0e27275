#!/usr/bin/env python
"""Benchmark: building TextPieces' token matrix for many distinct values, before and after
batching the tokenizer calls and filling the matrix with array operations (issue 13, item 2).

Not a test: it measures and writes ``results/benchmarks/text_pieces.{json,md}``.

The values are GoodReads-shaped distinct strings (most of GoodReads' 4.4M distinct values are
32-hex user ids and numeric book ids; the rest titles, names): ``--values`` of them in one field,
MiniLM's WordPiece tokenizer (the project's small PLM). Two stages, each timed for both paths:

- **tokenize**: before, one ``tokenizer(list)`` call (HF ``BatchEncoding`` of Python lists);
  after, :func:`flip_ctr.data.text.tokenize_values` (the fast tokenizer's ``encode_batch`` in
  chunks, ids flattened to one int64 array);
- **fill**: before, the per-value loop writing ``prefix + ids + suffix`` into each row
  (:func:`fill_pieces_loop`); after, :func:`fill_pieces` (one fancy-indexed assignment).

Both paths' matrices are compared (must be equal). ``--repeats`` takes the best of each.

    python benchmarks/bench_text_pieces.py --values 200000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import busy_processes, command_line, finish_run, fmt_table, header_lines, loadavg, machine_info, now  # noqa: E402


def goodreads_like_values(n: int, seed: int = 0) -> list[str]:
    from flip_ctr.data.synthetic import _words

    rng = np.random.default_rng(seed)
    n_users, n_books = int(n * 0.45), int(n * 0.4)
    users = [rng.bytes(16).hex() for _ in range(n_users)]  # 32-hex, as in the dump
    books = [str(x) for x in rng.choice(40_000_000, n_books, replace=False)]
    words = _words(4000, rng)
    rest = n - n_users - n_books
    titles = [" ".join(words[i] for i in rng.integers(0, len(words), int(rng.integers(1, 7)))) + f" #{k}" for k in range(rest)]
    return users + books + titles


def best_of(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def measure(num_values: int, repeats: int, max_value_tokens: int) -> dict:
    from flip_ctr.data.text import fill_pieces, fill_pieces_loop, tokenize_values
    from flip_ctr.models.plm import load_tokenizer

    tok = load_tokenizer("minilm_l6")
    values = goodreads_like_values(num_values)
    assert len(set(values)) == len(values) == num_values
    prefix = tok(" user id is", add_special_tokens=False)["input_ids"]
    suffix = tok(".", add_special_tokens=False)["input_ids"]
    pad = int(tok.pad_token_id)
    load_start = loadavg()

    t_tok_old, ids = best_of(lambda: tok([f" {v}" for v in values], add_special_tokens=False)["input_ids"], repeats)
    t_fill_old, (old_tokens, old_lengths) = best_of(lambda: fill_pieces_loop(ids, prefix, suffix, max_value_tokens, pad), repeats)
    t_tok_new, (flat, raw) = best_of(lambda: tokenize_values(values, tok), repeats)
    t_fill_new, (new_tokens, new_lengths) = best_of(lambda: fill_pieces(flat, raw, prefix, suffix, max_value_tokens, pad), repeats)
    equal = bool(np.array_equal(old_tokens, new_tokens) and np.array_equal(old_lengths, new_lengths))
    assert equal, "the array-built matrix differs from the loop's"
    return {
        "values": num_values,
        "tokens": int(raw.sum()),
        "matrix_shape": list(new_tokens.shape),
        "max_value_tokens": max_value_tokens,
        "repeats": repeats,
        "loadavg_before": load_start,
        "loadavg_after": loadavg(),
        "before": {"tokenize_s": t_tok_old, "fill_s": t_fill_old, "total_s": t_tok_old + t_fill_old},
        "after": {"tokenize_s": t_tok_new, "fill_s": t_fill_new, "total_s": t_tok_new + t_fill_new},
        "equal": equal,
    }


def markdown(res: dict) -> str:
    r = res["text_pieces"]
    b, a = r["before"], r["after"]
    lines = header_lines("TextPieces build: batched tokenizer + array fill (flip_ctr.data.text)", res)
    lines += [
        "",
        f"{r['values']:,} distinct GoodReads-shaped values in one field ({r['tokens']:,} value tokens, matrix "
        f"{r['matrix_shape'][0]:,} × {r['matrix_shape'][1]}), MiniLM WordPiece tokenizer, best of {r['repeats']}; "
        f"load average {r['loadavg_before']} before, {r['loadavg_after']} after. Matrices equal: {r['equal']}.",
        "",
        fmt_table(
            ["stage", "before (s)", "after (s)", "speed-up"],
            [[k, f"{b[k + '_s']:.2f}", f"{a[k + '_s']:.2f}", f"{b[k + '_s'] / max(a[k + '_s'], 1e-9):.1f}x"]
             for k in ("tokenize", "fill", "total")],
        ),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--values", type=int, default=200_000)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--max-value-tokens", type=int, default=32)
    p.add_argument("--out-name", default="text_pieces")
    p.add_argument("--out-dir", default=None)
    args = p.parse_args()
    t_start = time.perf_counter()
    res = {"command": command_line(), "date": now(), "machine": {**machine_info(), "busy_processes_start": busy_processes()}}
    res["text_pieces"] = measure(args.values, args.repeats, args.max_value_tokens)
    finish_run(res, t_start, markdown, args)


if __name__ == "__main__":
    main()
