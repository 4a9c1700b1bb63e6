"""Quantization algorithms: pure torch, no Hydra, no harness. Importing this package registers the built-in methods."""
from methods.registry import (Method, MethodConfig, MethodError, QuantResult, UnknownMethodError,  # noqa: F401
                              available, entry, get, register, unregister)
from methods import awq, fp, gptq, peers, rtn, salience  # noqa: F401,E402  (registration side effect; peers import lazily)
