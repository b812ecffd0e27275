"""Console entry point: `flip-ctr <command> [hydra overrides...]`.

Commands:
  train     one stage (default: an ID model trained from scratch), config conf/train.yaml
  pipeline  alignment pretraining → FLIP_ID / FLIP_PLM / FLIP finetuning and the from-scratch
            ID model, with a results table; config conf/pipeline.yaml
  analyze   a pipeline run → embedding SVD and field-alignment heatmap (paper Fig. 2/8/9)
  report    run directories → Markdown/CSV results table (mean ± std over seeds, paired t-test)
  help      this text

Hydra's own flags work after the command: `flip-ctr train -m id_model=dcnv2,deepfm seed=1,2,3`,
`flip-ctr train --cfg job`, `flip-ctr train --help`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig


def config_dir() -> str:
    """conf/ of the repository (editable install) unless FLIP_CTR_CONFIG_DIR points elsewhere."""
    env = os.environ.get("FLIP_CTR_CONFIG_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "conf"
    if not (path / "train.yaml").is_file():
        raise SystemExit(
            f"flip-ctr: no Hydra config at {path}/train.yaml. Install the repository in editable mode "
            "(`make install`) or set FLIP_CTR_CONFIG_DIR to the conf/ directory."
        )
    return str(path)


def _train(cfg: DictConfig) -> float | None:
    from flip_ctr.train import format_table, run

    metrics = run(cfg)
    if "auc" in metrics:
        print(format_table([metrics]))
    # Returned value is what Hydra sweepers (e.g. Optuna) optimise.
    return metrics.get("auc")


def _pipeline(cfg: DictConfig) -> float | None:
    from flip_ctr.train import run_pipeline

    results = run_pipeline(cfg)
    return results[-1].get("auc") if results else None


COMMANDS = {"train": ("train", _train), "pipeline": ("pipeline", _pipeline)}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("help", "-h", "--help"):
        print(__doc__)
        return
    command, rest = argv[0], argv[1:]
    if command in ("report", "analyze"):
        from importlib import import_module

        import_module(f"flip_ctr.{'report' if command == 'report' else 'analysis'}").main(rest)
        return
    if command not in COMMANDS:
        raise SystemExit(f"flip-ctr: unknown command {command!r}; commands: {', '.join(COMMANDS)}")
    config_name, fn = COMMANDS[command]
    sys.argv = [f"flip-ctr {command}", *rest]
    hydra.main(config_path=config_dir(), config_name=config_name, version_base="1.3")(fn)()


if __name__ == "__main__":
    main()
