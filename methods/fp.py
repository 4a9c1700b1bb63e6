"""The unquantized reference: leaves the model untouched."""
from methods.registry import QuantResult, register


@register("fp")
class FullPrecision:
    def quantize(self, model, calib, cfg) -> QuantResult:
        return QuantResult(method="fp")
