"""Every docstring example in the four packages runs and prints what it says."""
from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

PACKAGES = ("graphs", "policies", "executors", "scheduler")
# modules that need optional hardware backends to import are skipped by name
SKIP = {"executors.npu", "executors.cuda"}


def _modules():
    for pkg in PACKAGES:
        mod = importlib.import_module(pkg)
        yield pkg
        for info in pkgutil.walk_packages(mod.__path__, prefix=pkg + "."):
            if info.name not in SKIP and not info.name.endswith("__main__"):
                yield info.name


# modules whose examples need the optional [llm] extra (gguf, tokenizers)
NEEDS = {"graphs.tokenizer": "tokenizers", "graphs.gguf": "gguf"}


@pytest.mark.parametrize("name", sorted(set(_modules())))
def test_docstring_examples(name):
    if name in NEEDS:
        pytest.importorskip(NEEDS[name], reason=f"{name}'s examples need the [llm] extra")
    mod = importlib.import_module(name)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
