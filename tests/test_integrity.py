"""SHA-256 digests of the aligned checkpoint directory that finetuning loads (checksums.json):
recorded by every save, checked by every load, a changed file refused with one line naming the
file and both digests; a directory from before digests loads with a warning."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from flip_ctr.integrity import CHECKSUMS_FILE, IntegrityError, sha256_file
from flip_ctr.models.id import build_id_model
from flip_ctr.stages.checkpoints import load_aligned_plm, load_heads, load_id_model, save_aligned, save_heads

SPEC = {"name": "dcnv2", "num_features": 12, "num_fields": 3, "embedding_dim": 4, "dnn_hidden_units": [8]}


class FakePLM:
    """What save_aligned needs of a PLM: save_pretrained writing a few files (one in a subfolder)."""

    def save_pretrained(self, folder) -> None:
        folder = Path(folder)
        (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
        (folder / "model.safetensors").write_bytes(bytes(range(256)) * 8)
        (folder / "tokenizer").mkdir()
        (folder / "tokenizer" / "vocab.txt").write_text("[PAD]\n[MASK]\n")


@pytest.fixture
def aligned(tmp_path) -> Path:
    torch.manual_seed(0)
    save_aligned(tmp_path, build_id_model(**SPEC), SPEC, FakePLM())
    save_heads(tmp_path / "alignment_heads.pt", {"icl": torch.nn.Linear(2, 2)}, {"nce": "corrected"})
    return tmp_path


def _flip_byte(path: Path, at: int = 60) -> None:
    data = bytearray(path.read_bytes())
    data[min(at, len(data) - 1)] ^= 0x01
    path.write_bytes(bytes(data))


def test_every_saved_file_is_recorded(aligned):
    digests = json.loads((aligned / CHECKSUMS_FILE).read_text())["sha256"]
    files = sorted(p.relative_to(aligned).as_posix() for p in aligned.rglob("*") if p.is_file() and p.name != CHECKSUMS_FILE)
    assert sorted(digests) == files == [
        "alignment_heads.pt", "id_model.pt", "plm/config.json", "plm/model.safetensors", "plm/tokenizer/vocab.txt"]
    assert all(digests[f] == sha256_file(aligned / f) for f in files)
    model, spec = load_id_model(aligned)  # intact: loads
    assert spec == SPEC and load_heads(aligned)["config"] == {"nce": "corrected"}


@pytest.mark.parametrize("victim", ["id_model.pt", "alignment_heads.pt", "plm/model.safetensors", "plm/tokenizer/vocab.txt"])
def test_a_flipped_byte_is_refused_in_one_line(aligned, victim):
    expected = sha256_file(aligned / victim)
    _flip_byte(aligned / victim)
    load = {"id_model.pt": load_id_model, "alignment_heads.pt": load_heads}.get(victim, load_aligned_plm)
    with pytest.raises(IntegrityError) as err:
        load(aligned)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{aligned / victim}: SHA-256 mismatch")
    assert f"expected {expected}" in message and f"found {sha256_file(aligned / victim)}" in message


def test_a_truncated_or_added_plm_file_is_refused(aligned):
    (aligned / "plm" / "extra.bin").write_bytes(b"not written by pretraining")
    with pytest.raises(IntegrityError, match=r"extra.bin: no SHA-256 recorded"):
        load_aligned_plm(aligned)
    (aligned / "plm" / "extra.bin").unlink()
    (aligned / "plm" / "model.safetensors").unlink()
    with pytest.raises(IntegrityError, match=r"model.safetensors: missing"):
        load_aligned_plm(aligned)
    path = aligned / "id_model.pt"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(IntegrityError, match="SHA-256 mismatch"):
        load_id_model(aligned)


def test_a_directory_from_before_digests_loads_with_a_warning(aligned, caplog):
    (aligned / CHECKSUMS_FILE).unlink()
    with caplog.at_level(logging.WARNING, logger="flip_ctr.integrity"):
        _, spec = load_id_model(aligned)
    assert spec == SPEC and "loading it unverified" in caplog.text


def test_resaving_the_plm_forgets_files_it_no_longer_writes(aligned):
    (aligned / CHECKSUMS_FILE).write_text(json.dumps({"sha256": {
        **json.loads((aligned / CHECKSUMS_FILE).read_text())["sha256"], "plm/old_weights.bin": "0" * 64}}))
    save_aligned(aligned, build_id_model(**SPEC), SPEC, FakePLM())
    digests = json.loads((aligned / CHECKSUMS_FILE).read_text())["sha256"]
    assert "plm/old_weights.bin" not in digests and "alignment_heads.pt" in digests
    load_heads(aligned)
