"""Shared pytest fixtures and paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import SHARED_DATA, export_test_model

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def shared_imagenette() -> Path:
    """The real Imagenette2 train folder beside the repo; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def exported_model(tmp_path_factory) -> Path:
    """The service tests' small model (tests/helpers.py), exported once for every module."""
    return Path(export_test_model(tmp_path_factory.mktemp("models")))


@pytest.fixture(scope="session")
def bentoml_home(tmp_path_factory) -> Path:
    """A BENTOML_HOME for the servers the tests start (never ~/bentoml)."""
    return tmp_path_factory.mktemp("bentoml_home")
