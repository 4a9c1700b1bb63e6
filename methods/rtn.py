"""Round-to-nearest: the baseline every calibrated method must beat. Ignores calibration data."""
import time

from tqdm.auto import tqdm

from methods.registry import Method, MethodConfig, QuantResult, register
from methods.targets import fake_quantize_linears, peak_rss_mb, prepare_targets


@register("rtn", MethodConfig, calibrated=False)
class RoundToNearest(Method):
    def quantize(self, model, calib, cfg) -> QuantResult:
        t0 = time.perf_counter()
        spec, linears = prepare_targets(model, cfg)
        with tqdm(total=len(linears), desc="rtn: quantizing", unit="linear") as bar:
            stats, qweights = fake_quantize_linears(linears, spec, bar)
        return QuantResult(self.name, time.perf_counter() - t0, peak_rss_mb(), stats, qweights)
