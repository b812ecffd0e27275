"""Console entry point: `flip-ctr <command> [hydra overrides...]`.

Commands:
  train     one stage (default: an ID model trained from scratch), config conf/train.yaml
  pipeline  alignment pretraining → FLIP_ID / FLIP_PLM / FLIP finetuning and the from-scratch
            ID model, with a results table; config conf/pipeline.yaml
  analyze   a pipeline run → embedding SVD and field-alignment heatmap (paper Fig. 2/8/9)
  report    run directories → Markdown/CSV results table (mean ± std over seeds, paired t-test)
  export    RUN_DIR --out MODEL_DIR: an ID-model stage (ctr, finetune_id) → ONNX + vocabularies + digests
  predict   MODEL_OR_RUN_DIR --input rows.parquet --output preds.parquet: raw rows → probabilities
  cache     list | clean [--all]: the preprocessed-data entries, and removing the stale ones
  help      this text

Your own data: `flip-ctr train data=table data.path=FILE_OR_DIR data.schema=SCHEMA.yaml` (docs/own_data.md).

Hydra's own flags work after the command: `flip-ctr train -m id_model=dcnv2,deepfm seed=1,2,3`,
`flip-ctr train --cfg job`, `flip-ctr train --help`.

A failed train/pipeline job writes its traceback to <run dir>/error.txt; in a multirun it is also
listed in <sweep dir>/failures.tsv, the sweep goes on, and the command exits 1 at the end.
Invalid data or config values are reported as one line on stderr, exit status 2 (the traceback
too with HYDRA_FULL_ERROR=1).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import traceback
from pathlib import Path

import hydra
from omegaconf import DictConfig

from flip_ctr.config import ConfigError, validate_config  # also registers the ${table_name:...} resolver
from flip_ctr.quiet import silence_known_noise

log = logging.getLogger(__name__)
# Sweep dirs (this process) in which a job failed: the command exits 1 once the sweep is over.
_FAILED_SWEEPS: set[Path] = set()


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

    validate_config(cfg)
    metrics = run(cfg)
    if "auc" in metrics:
        print(format_table([metrics]))
    # Returned value is what Hydra sweepers (e.g. Optuna) optimise: the validation AUC of the
    # selected epoch, never the test AUC (model selection must not see the test set).
    return _objective(metrics)


def _pipeline(cfg: DictConfig) -> float | None:
    from flip_ctr.train import run_pipeline

    validate_config(cfg)
    results = run_pipeline(cfg)
    return _objective(results[-1]) if results else None


def _objective(metrics: dict) -> float | None:
    """Validation AUC of a stage's selected checkpoint (test AUC only where no validation ran)."""
    value = metrics.get("best_val_auc")
    return value if value is not None else metrics.get("auc")


def _record_failure(fn):
    """A failing job leaves <run dir>/error.txt (the traceback). In a multirun it also appends a
    line to <sweep dir>/failures.tsv and returns NaN instead of raising, so the other jobs run
    (and an optimising sweeper such as Optuna marks the trial failed rather than stopping)."""

    @functools.wraps(fn)
    def wrapper(cfg: DictConfig):
        try:
            return fn(cfg)
        except Exception as err:
            from hydra.core.hydra_config import HydraConfig
            from hydra.types import RunMode

            hc = HydraConfig.get()
            run_dir = Path(hc.runtime.output_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "error.txt").write_text(traceback.format_exc())
            if hc.mode != RunMode.MULTIRUN:
                _exit_on_input_error(err)
                raise
            log.exception("job %s failed (traceback in %s)", hc.job.num, run_dir / "error.txt")
            sweep_dir = Path(hc.sweep.dir)
            reason = f"{type(err).__name__}: {err}".replace("\t", " ").replace("\n", " ")[:500]
            # one short O_APPEND write per line: safe with jobs of a parallel launcher appending too
            with open(sweep_dir / "failures.tsv", "a") as fh:
                fh.write(f"{hc.job.num}\t{run_dir}\t{' '.join(hc.overrides.task)}\t{reason}\n")
            _FAILED_SWEEPS.add(sweep_dir)
            return float("nan")

    return wrapper


def _input_errors() -> tuple[type[Exception], ...]:
    from flip_ctr.data.schema import DataError

    return (DataError, ConfigError)


def _exit_on_input_error(err: Exception) -> None:
    """Bad data or config: one line on stderr and exit status 2 (HYDRA_FULL_ERROR=1: the traceback)."""
    if isinstance(err, _input_errors()) and os.environ.get("HYDRA_FULL_ERROR") != "1":
        command = os.environ.get(_COMMAND_ENV)
        print(f"flip-ctr{' ' + command if command else ''}: {' '.join(str(err).split())}", file=sys.stderr)
        raise SystemExit(2) from None


COMMANDS = {"train": ("train", _record_failure(_train)), "pipeline": ("pipeline", _record_failure(_pipeline))}


# Lightning's DDP launcher starts ranks > 0 by re-running sys.argv, which by then holds only the
# Hydra overrides: the command travels to them in the environment.
_COMMAND_ENV = "FLIP_CTR_COMMAND"


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and "=" in argv[0] and os.environ.get(_COMMAND_ENV) in COMMANDS:
        argv = [os.environ[_COMMAND_ENV], *argv]
    if not argv or argv[0] in ("help", "-h", "--help"):
        print(__doc__)
        return
    command, rest = argv[0], argv[1:]
    silence_known_noise()
    if command == "cache":
        from flip_ctr.data.cache import main as cache_main

        cache_main(rest)
        return
    if command in ("report", "analyze"):
        from importlib import import_module

        import_module(f"flip_ctr.{'report' if command == 'report' else 'analysis'}").main(rest)
        return
    if command in ("export", "predict"):
        from flip_ctr.serving import main as serve  # no Lightning, no transformers

        serve([command, *rest])
        return
    if command not in COMMANDS:
        known = [*COMMANDS, "analyze", "report", "export", "predict", "cache", "help"]
        raise SystemExit(f"flip-ctr: unknown command {command!r}; commands: {', '.join(known)}")
    config_name, fn = COMMANDS[command]
    os.environ[_COMMAND_ENV] = command
    sys.argv = [sys.argv[0], *rest]  # Hydra parses sys.argv[1:]; argv[0] stays re-runnable for DDP
    hydra.main(config_path=config_dir(), config_name=config_name, version_base="1.3")(fn)()
    if _FAILED_SWEEPS:
        listed = ", ".join(str(d / "failures.tsv") for d in sorted(_FAILED_SWEEPS))
        raise SystemExit(f"flip-ctr {command}: some sweep jobs failed; see {listed}")


if __name__ == "__main__":
    main()
