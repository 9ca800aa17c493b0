"""pytest's fixtures and hooks for the whole suite; the helpers the tests import are in ``helpers.py``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import compose_task, compose_train, tiny_except
from hydra.core.global_hydra import GlobalHydra


@pytest.fixture
def train_task():
    """Call the train task in-process: ``train_task(run_dir, *overrides) -> summary``."""
    from nas_cli.commands import train

    def run(run_dir: Path, *overrides: str) -> dict:
        return train.task(compose_train(run_dir, [*tiny_except(overrides), *overrides]))

    yield run
    GlobalHydra.instance().clear()


@pytest.fixture
def search_rl_task():
    """Call the search-rl task in-process: ``search_rl_task(run_dir, *overrides) -> summary``."""
    from nas_cli.commands import search_rl

    def run(run_dir: Path, *overrides: str) -> dict:
        return search_rl.task(compose_task("search_rl", run_dir, list(overrides)))

    yield run
    GlobalHydra.instance().clear()


@pytest.fixture
def one_thread():
    """Tiny convolutions on a shared 2-core machine: one torch thread is several times faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def release_run_folders():
    """A task called in this process keeps its run folder's lock until the process ends: give it up after
    each test, as the command line does after each command."""
    yield
    from nas_cli.runs import folders

    folders.release_all()


def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.gpu`` (one definition, in pyproject.toml): skipped on a machine without CUDA."""
    if torch.cuda.is_available():
        return
    needs_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(needs_gpu)
