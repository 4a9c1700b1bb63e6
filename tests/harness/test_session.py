"""harness/session.py: pristine weights between variants, master weights for methods and export,
evaluation in the compute dtype."""
import torch
from hydra import compose, initialize_config_module

from harness import models
from harness import plan as plan_mod
from harness import session as session_mod
from harness.config import register_configs
from harness.data import EVAL_DIR
from methods import capture


def compose_cfg(*overrides):
    register_configs()
    with initialize_config_module(config_module="conf", version_base="1.3"):
        return compose("config", overrides=list(overrides))


def tiny_cfg(model_dir, tmp_path, *extra):
    return compose_cfg("model=path", f"model.path={model_dir}", f"cache_dir={tmp_path / 'cache'}",
                       f"store_dir={tmp_path / 'store'}", "eval=perplexity", f"eval.texts=[{EVAL_DIR / 'code_py.txt'}]",
                       "eval.seqlen=64", "eval.max_windows=2", "calib=code", "calib.n_samples=2", "calib.seqlen=32", *extra)


def test_restore_brings_back_the_exact_original_weights(tmp_path, tiny_llama_dir):
    cfg = tiny_cfg(tiny_llama_dir, tmp_path)
    variants = [plan_mod.Variant(plan_mod.method_config("awq"), cfg.calib),
                plan_mod.Variant(plan_mod.method_config("rtn", {"quantize_lm_head": True}), cfg.calib)]
    session = session_mod.Session.open(cfg, variants)
    session.restore()  # the master weights (open left the model in the compute dtype, bf16 on a bf16 CPU)
    before = models.fingerprint(session.model)
    for v in variants:  # AWQ moves norms and Linears; an RTN head unties it from the embeddings
        session.quantize(v)
        assert models.fingerprint(session.model) != before
        session.restore()
        session.model.to(torch.float32)
        assert models.fingerprint(session.model) == before
        assert session_mod.head_is_tied(session.model) == session.tied_head


def test_bf16_compute_evaluates_in_bf16_and_quantizes_fp32_master_weights(tmp_path, tiny_llama_dir):
    cfg = tiny_cfg(tiny_llama_dir, tmp_path, "model.compute_dtype=bf16")
    v = plan_mod.Variant(plan_mod.method_config("rtn"), cfg.calib)
    session = session_mod.Session.open(cfg, [v])
    assert {p.dtype for p in session.model.parameters()} == {torch.bfloat16}  # the FP reference ran in bf16
    assert all(t.dtype == torch.float32 for t in session.snapshot.values())
    seen = []
    method = v.entry.method
    real = method.quantize
    try:
        method.quantize = lambda model, calib, mcfg: seen.append(({p.dtype for p in model.parameters()},
                                                                   capture._FORWARD_DTYPE.get())) or real(model, calib, mcfg)
        out = session.run_variant(v, "run")
    finally:
        method.quantize = real
    assert seen == [({torch.float32}, torch.bfloat16)]  # master weights, calibration passes in the compute dtype
    assert capture._FORWARD_DTYPE.get() is None
    assert {p.dtype for p in session.model.parameters()} == {torch.bfloat16}
    assert (out.rows.compute_dtype == "bf16").all()
    session.restore()  # back to master weights: computed buffers (rotary tables) never passed through bf16
    fresh, _ = models.load(cfg.model)
    fresh_buffers = dict(fresh.named_buffers())
    for name, buf in session.model.named_buffers():
        assert buf.dtype == fresh_buffers[name].dtype and torch.equal(buf, fresh_buffers[name]), name
    fp32 = tiny_cfg(tiny_llama_dir, tmp_path, "model.compute_dtype=fp32")
    from harness.config_hash import config_hash

    assert config_hash(cfg) != config_hash(fp32)  # the dtype is part of the identity


def test_rows_name_the_calibration_seed_and_the_changed_method_options(tmp_path, tiny_llama_dir):
    cfg = tiny_cfg(tiny_llama_dir, tmp_path, "calib.seed=3")
    variants = [plan_mod.reference_variant(cfg), plan_mod.Variant(plan_mod.method_config("awq", {"n_grid": 4}), cfg.calib)]
    session = session_mod.Session.open(cfg, variants)
    fp, awq = (session.run_variant(v, "run").rows for v in variants)
    assert set(awq.calib_seed) == {3} and set(awq.method_options) == {"n_grid=4"}
    assert fp.calib_seed.isna().all() and set(fp.method_options) == {""}  # FP reads no calibration
