"""`python -m harness [overrides]`: the Hydra entry point. Thin: composition, errors, output."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub unless the user opts in
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402

from harness.cli_checks import check_group_choices  # noqa: E402
from harness.config import register_configs  # noqa: E402
from harness.errors import HarnessError  # noqa: E402

register_configs()


def fail(msg: str, out_dir: Path | None = None) -> None:
    if out_dir is not None:
        _remove_partial(out_dir)
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def _remove_partial(out_dir: Path) -> None:
    """Drop what Hydra created for a run that failed; never touch an earlier run's results."""
    if (out_dir / "results.csv").exists():
        return
    shutil.rmtree(out_dir / ".hydra", ignore_errors=True)
    try:
        out_dir.rmdir()
    except OSError:
        pass


@hydra.main(config_path="pkg://conf", config_name="config", version_base="1.3")
def main(cfg) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        from harness.run import run
        from harness.report import write_run_outputs
        from harness.store import done_before
        from harness import experiments

        if experiments.selected(cfg):  # a study (+experiment=salience|calib_matrix): many variants, one model
            experiments.write_outputs(experiments.run(cfg, out_dir), cfg, out_dir)
            return

        if done_before(cfg, HydraConfig.get().mode):  # a resumed sweep skips configs already stored
            _remove_partial(out_dir)
            return
        df, _ = run(cfg, out_dir)
        write_run_outputs(df, cfg, out_dir)
    except HarnessError as e:
        fail(str(e), out_dir)
    except KeyboardInterrupt:
        fail("interrupted; no results written", out_dir)


if __name__ == "__main__":
    try:
        check_group_choices(sys.argv[1:])
    except HarnessError as e:
        fail(str(e))
    main()
