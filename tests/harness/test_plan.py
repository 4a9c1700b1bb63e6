"""harness/plan.py: what a session runs."""
import pytest

from harness import plan as plan_mod
from harness.errors import HarnessError
from tests.harness.test_session import tiny_cfg


@pytest.mark.parametrize("names, expected", [(["fp", "rtn", "awq"], ["fp", "rtn", "awq"]),
                                             (["rtn", "rtn"], ["fp", "rtn"]), ([], ["fp", "rtn"])])
def test_plan_of_variants(names, expected, tmp_path, tiny_llama_dir):
    cfg = tiny_cfg(tiny_llama_dir, tmp_path, f"variants=[{','.join(names)}]", "method.bits=3", "method.group_size=32")
    plan = plan_mod.build(cfg)
    assert [v.name for v in plan] == expected  # FP first (reference=true), repeats merged
    quantized = [v for v in plan if not v.entry.reference]
    assert all(v.method.bits == 3 and v.method.group_size == 32 for v in quantized)  # overrides reach each one


def test_an_unknown_name_in_variants_names_the_choices(tmp_path, tiny_llama_dir):
    with pytest.raises(HarnessError, match="unknown method in variants 'awk'; choose one of: awq, "):
        plan_mod.build(tiny_cfg(tiny_llama_dir, tmp_path, "variants=[fp,awk]"))


def test_overrides_reach_only_the_variants_that_have_the_field(tmp_path, tiny_llama_dir):
    plan = plan_mod.build(tiny_cfg(tiny_llama_dir, tmp_path, "method=awq", "method.n_grid=5",
                                   "method.duo_scaling=false", "variants=[awq,gptq]"))
    by_name = {v.name: v.method for v in plan}
    assert by_name["awq"].duo_scaling is False and "duo_scaling" not in by_name["gptq"]
    assert by_name["awq"].n_grid == by_name["gptq"].n_grid == 5  # the clip search's grid: both have it


def test_options_label_names_what_differs_from_the_method_defaults():
    assert plan_mod.options_label(plan_mod.method_config("awq")) == ""
    cfg = plan_mod.method_config("awq", {"loss": "block", "duo_scaling": False, "bits": 3, "n_grid": 10})
    assert plan_mod.options_label(cfg) == "duo_scaling=false loss=block n_grid=10"  # bits has a column of its own
    assert plan_mod.options_label(plan_mod.method_config("awq_scale")) == ""  # a registered ablation's own defaults
