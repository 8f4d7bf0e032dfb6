"""Shared fixtures. Tests are offline and deterministic; the datasets are read from ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ADAPTREC_DATA", REPO.parent / "shared" / "data"))
FIXTURES = REPO / "tests" / "fixtures"


def data_path(*parts: str) -> Path:
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"dataset path {path} not found; set ADAPTREC_DATA to the shared/data folder")
    return path


@pytest.fixture(scope="session")
def ml100k_raw() -> Path:
    return data_path("ml-100k")


@pytest.fixture(scope="session")
def lastfm_raw() -> Path:
    return data_path("lastfm-2k")


@pytest.fixture(scope="session")
def llara_lastfm_raw() -> Path:
    return data_path("llara-ref", "lastfm")


@pytest.fixture(scope="session")
def llara_movielens_raw() -> Path:
    return data_path("llara-ref", "movielens")


@pytest.fixture(scope="session")
def goodreads_raw() -> Path:
    return FIXTURES / "goodreads"


@pytest.fixture(scope="session")
def ml100k_prepared(tmp_path_factory, ml100k_raw) -> Path:
    """ML-100K prepared once per session with the default protocol and seed 0."""
    from adaptrec_prompts.prepare import build, save
    from adaptrec_prompts.protocol import ProtocolConfig

    ddict, titles, manifest = build("ml-100k", ml100k_raw, ProtocolConfig())
    return save(ddict, titles, manifest, tmp_path_factory.mktemp("prepared") / "ml-100k")
