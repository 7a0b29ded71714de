"""Shared graph fixtures: the reference model captured once per session.

The ``1b`` config lives on the meta device (no weights allocated; capture takes well under
a second); ``tiny`` has real weights so outputs can be compared.
"""
from __future__ import annotations

import pytest

from graphs import capture
from graphs.models import example_inputs, pangu_embedded

PREFILL_LEN = 128


@pytest.fixture(scope="session")
def model_1b():
    return pangu_embedded("1b", device="meta")


@pytest.fixture(scope="session")
def graph_1b(model_1b):
    return capture(model_1b, example_inputs(model_1b, seq_len=PREFILL_LEN))


@pytest.fixture(scope="session")
def model_tiny():
    return pangu_embedded("tiny")


@pytest.fixture(scope="session")
def inputs_tiny(model_tiny):
    return example_inputs(model_tiny, batch=2, seq_len=16)


@pytest.fixture(scope="session")
def graph_tiny(model_tiny, inputs_tiny):
    return capture(model_tiny, inputs_tiny)

