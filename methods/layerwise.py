"""The layer-by-layer driver that every calibrated method (awq, gptq, awq_gptq) runs its own step in."""
from __future__ import annotations

import logging
import time
from typing import Callable

from tqdm.auto import tqdm

from methods import onload
from methods.capture import LayerwiseRunner
from methods.mappings import mapping_for
from methods.registry import QuantResult
from methods.targets import fake_quantize_linears, peak_rss_mb, prepare_targets

log = logging.getLogger(__name__)

# quantize_layer(runner, i, mapping, spec, cfg, skipped, stats_out, qweights) quantizes decoder layer i,
# appends its evidence to stats_out and its codes to qweights, adds the scale groups it could not
# fold to skipped, and returns the full names of the Linears it quantized
LayerStep = Callable[..., set]


def quantize_layerwise(name: str, model, calib, cfg, quantize_layer: LayerStep) -> QuantResult:
    """Run ``quantize_layer`` on every decoder layer in order (each held on its device meanwhile);
    the targets outside the decoder layers (e.g. an output head when asked) get plain RTN."""
    t0 = time.perf_counter()
    if calib is None:
        raise ValueError(f"{name} needs calibration data")
    mapping = mapping_for(model)
    spec, targets = prepare_targets(model, cfg)
    runner = LayerwiseRunner(model, mapping, calib.input_ids, cfg.batch_size)
    stats_out, qweights, skipped, done = [], {}, set(), set()
    for i in tqdm(range(len(runner.layers)), desc=f"{name}: layers", unit="layer"):
        with onload.held(runner.layers[i]):
            done |= quantize_layer(runner, i, mapping, spec, cfg, skipped, stats_out, qweights)
    rest = {n: m for n, m in targets.items() if n not in done}
    if rest:
        qweights.update(fake_quantize_linears(rest, spec)[1])
    if skipped:
        log.warning("%s: scale groups skipped (shapes do not allow folding, e.g. GQA): %s",
                    name, ", ".join(sorted(skipped)))
    return QuantResult(name, time.perf_counter() - t0, peak_rss_mb(), stats_out, qweights)
