"""The config checks that run before the heavy imports keep up with the code they stand for."""

from __future__ import annotations

import importlib
import inspect

import pytest

from src.checks import DATA_KEYS


@pytest.mark.parametrize("target", list(DATA_KEYS))
def test_data_keys_are_the_data_module_parameters(target: str) -> None:
    """`+data.<typo>=...` is refused by name; a data setting added to a data module must be
    listed in DATA_KEYS too, or every run that sets it would be refused."""
    module, name = target.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    params = [
        p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "processor")
    ]
    assert sorted(DATA_KEYS[target]) == sorted(params)
