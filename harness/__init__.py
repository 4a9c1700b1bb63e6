"""quant-harness: quantize one model several ways and decide which to ship, with evidence."""
__version__ = "0.1.0"
