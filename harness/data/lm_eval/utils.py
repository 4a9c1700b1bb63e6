"""Loader for the shipped lm-eval task (referenced from qh_everyday_mc.yaml as ``!function``)."""
from pathlib import Path

import datasets

HERE = Path(__file__).resolve().parent


def load_everyday_mc(**_metadata) -> datasets.DatasetDict:
    # a local JSON file, resolved next to this module so the task works from any working directory
    return datasets.load_dataset("json", data_files={"test": str(HERE / "qh_everyday_mc.jsonl")})
