"""Round-to-nearest: the baseline every calibrated method must beat. Ignores calibration data."""
import time

from tqdm.auto import tqdm

from methods.quantizer import QuantSpec
from methods.registry import QuantResult, register
from methods.targets import check_group_size, fake_quantize_linears, peak_rss_mb, target_linears, untie_head


def spec_from(cfg) -> QuantSpec:
    return QuantSpec(bits=cfg.bits, group_size=cfg.group_size, symmetric=cfg.symmetric)


@register("rtn")
class RoundToNearest:
    def quantize(self, model, calib, cfg) -> QuantResult:
        t0 = time.perf_counter()
        spec = spec_from(cfg)
        if cfg.quantize_lm_head:
            untie_head(model)
        linears = target_linears(model, include_lm_head=cfg.quantize_lm_head)
        check_group_size(linears, spec)
        with tqdm(total=len(linears), desc="rtn: quantizing", unit="linear") as bar:
            stats, qweights = fake_quantize_linears(linears, spec, bar)
        return QuantResult("rtn", time.perf_counter() - t0, peak_rss_mb(), stats, qweights)
