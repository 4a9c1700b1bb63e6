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
from hydra.types import RunMode  # noqa: E402

from harness.cli_checks import check_group_choices  # noqa: E402
from harness.config import register_configs  # noqa: E402
from harness.errors import HarnessError  # noqa: E402

register_configs()


def fail(msg: str, out_dir: Path | None = None) -> None:
    if out_dir is not None:
        remove_partial(out_dir)
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def remove_partial(out_dir: Path) -> None:
    """Drop what Hydra created for a run that failed; never touch an earlier run's results."""
    if (out_dir / "results.csv").exists():
        return
    shutil.rmtree(out_dir / ".hydra", ignore_errors=True)
    try:
        out_dir.rmdir()
    except OSError:
        pass


def plan_of(cfg):
    """The variants this command runs: a study's plan, or the plain run / ``variants=[...]`` plan."""
    from harness import experiments, plan

    if experiments.selected(cfg):
        return experiments.plan(cfg)
    return plan.build(cfg)


@hydra.main(config_path="pkg://conf", config_name="config", version_base="1.3")
def main(cfg) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        from harness import outputs, session

        variants = plan_of(cfg)
        outcomes = session.run(cfg, variants, out_dir.name, resume=cfg.resume and (multirun or bool(cfg.variants)))
        if multirun and all(o.result is None for o in outcomes):  # a resumed sweep: this job was done before
            remove_partial(out_dir)
            return
        outputs.write(*session.combined(outcomes), cfg, out_dir)
    except HarnessError as e:
        fail(str(e), out_dir)
    except KeyboardInterrupt:
        fail("interrupted; finished variants are in the store, nothing else was written", out_dir)


def check_output_dirs(argv: list[str]) -> None:
    """Hydra creates the run directory before the run starts: check the one the user named (or the
    default parent) can be written, so /proc/x is one line, not Hydra's traceback."""
    from harness.checks import check_writable

    named = {k: v for k, _, v in (a.partition("=") for a in argv) if k in ("hydra.run.dir", "hydra.sweep.dir")}
    for key, value in (named or {"hydra.run.dir": "results/runs"}).items():
        if "${" not in value:
            check_writable(value, key, keep=False)


if __name__ == "__main__":
    try:
        check_group_choices(sys.argv[1:])
        check_output_dirs(sys.argv[1:])
    except HarnessError as e:
        fail(str(e))
    main()
