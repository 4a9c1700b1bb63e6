"""Adapters to other quantization tools, run on our model and calibration windows and evaluated by
our own suites. Importing this package registers the methods; the tools themselves are imported
only when a method runs (optional extra ``quant-harness[peers]``)."""
from methods.peers import gptqmodel_adapter, llmcompressor_adapter  # noqa: F401  (registration)
