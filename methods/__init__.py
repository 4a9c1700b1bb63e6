"""Quantization algorithms: pure torch, no Hydra, no harness.

Importing this package registers every method: each module of this package (and ``peers/``) is
imported once, so adding a method is adding one file (README, "Adding a method")."""
import importlib
import pkgutil

from methods.registry import (Method, MethodConfig, MethodError, QuantResult, UnknownMethodError,  # noqa: F401
                              available, check_choices, entry, get, register, unregister)

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
