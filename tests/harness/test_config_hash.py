"""The config hash decides what a resumed sweep skips: it must change exactly when the numbers can."""
from hydra import compose, initialize_config_module

from harness.config import register_configs
from harness.run import config_hash


def cfg(*overrides):
    register_configs()
    with initialize_config_module(config_module="conf", version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_fp_hash_ignores_quantization_and_calibration_settings():
    base = config_hash(cfg("method=fp"))
    assert config_hash(cfg("method=fp", "method.bits=3")) == base
    assert config_hash(cfg("method=fp", "calib=code")) == base
    assert config_hash(cfg("method=fp", "eval.max_windows=3")) != base


def test_quantized_hash_follows_every_setting_that_moves_numbers():
    base = config_hash(cfg("method=rtn"))
    assert config_hash(cfg("method=rtn", "method.bits=3")) != base
    assert config_hash(cfg("method=gptq", "calib=code")) != config_hash(cfg("method=gptq"))
    assert config_hash(cfg("method=rtn", "store_dir=/elsewhere")) == base


def test_nightly_sweeps_both_bit_widths_into_its_own_store():
    register_configs()
    with initialize_config_module(config_module="conf", version_base="1.3"):
        c = compose("config", overrides=["+experiment=nightly"], return_hydra_config=True)
    params = c.hydra.sweeper.params
    assert params["method"] == "fp,rtn,gptq,awq" and params["method.bits"] == "4,3"
    assert c.resume is True
