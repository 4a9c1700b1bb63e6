"""Quantization algorithms: pure torch, no Hydra. Importing this package registers the built-in methods."""
from methods.registry import Method, QuantResult, available, get, register  # noqa: F401
from methods import awq, fp, gptq, peers, rtn  # noqa: F401,E402  (registration side effect; peers import lazily)
