"""Shared fixtures of the trainer tests."""

import pytest

from scdpo.toy.model import ToyTextToImage


@pytest.fixture(scope="module")
def toy_model():
    """A random-weight toy model (seed 0), one per test module: tests that attach adapters to it
    train on deep copies or remove them again."""
    return ToyTextToImage.from_scratch(0)
