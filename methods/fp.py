"""The unquantized reference: an ordinary method that leaves the model untouched.

``FP`` is the one spelling of its name; every other module compares against this constant."""
from methods.registry import Method, MethodConfig, QuantResult, register

FP = "fp"


@register(FP, MethodConfig, calibrated=False, reference=True)
class FullPrecision(Method):
    def quantize(self, model, calib, cfg) -> QuantResult:
        return QuantResult(method=self.name)
