"""harness/config_hash.py: the identity of a variant's numbers (what a resumed sweep skips)."""
from hydra import compose, initialize_config_module

from harness.config import register_configs
from harness.config_hash import config_hash


def cfg(*overrides):
    register_configs()
    with initialize_config_module(config_module="conf", version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_fp_hash_ignores_quantization_and_calibration_settings():
    base = config_hash(cfg("method=fp"))
    assert config_hash(cfg("method=fp", "method.bits=3")) == base
    assert config_hash(cfg("method=fp", "calib=code")) == base
    assert config_hash(cfg("method=fp", "eval.max_windows=5")) != base


def test_quantized_hash_follows_every_setting_that_moves_numbers():
    base = config_hash(cfg("method=rtn"))
    assert config_hash(cfg("method=rtn", "method.bits=3")) != base
    assert config_hash(cfg("method=gptq", "calib=code")) != config_hash(cfg("method=gptq"))
    assert config_hash(cfg("method=rtn", "store_dir=/elsewhere")) == base


def test_settings_that_never_move_a_number_leave_the_hash():
    base = config_hash(cfg("method=rtn"))
    for override in ("sanity.max_ppl_ratio=3", "resume=false", "variants=[fp,rtn]", "cache_dir=/x", "export.dir=/y"):
        assert config_hash(cfg("method=rtn", override)) == base, override
    assert config_hash(cfg("method=rtn", "seed=1")) != base


def test_offload_is_in_the_hash_and_its_scratch_directory_is_not():
    base = config_hash(cfg("method=rtn"))
    assert config_hash(cfg("method=rtn", "model.offload=none")) == base  # the default keeps earlier hashes
    disk = config_hash(cfg("method=rtn", "model.offload=disk"))
    assert disk != base
    assert config_hash(cfg("method=rtn", "model.offload=disk", "model.offload_dir=/elsewhere")) == disk
