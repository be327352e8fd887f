import logging
import os

import pytest
import torch

from lowmed import prepare, train
from lowmed.config import TrainConfig
from lowmed.console import log_to_terminal
from tests.factory import make_chexpert, make_ham10000, make_kermany, make_nih

FAST = {"image_size": 32, "batch_size": 16, "lr": 1e-3}  # tiny images, quick learning


def pytest_configure(config):
    """Under pytest-xdist the workers share the cores: each worker, and each process it starts, takes its share of
    threads rather than all of them (OpenMP threads spinning on a busy core slow everyone down)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)


@pytest.fixture(autouse=True)
def terminal_output():
    """Every test sees lowmed's output on stderr as a command shows it, whatever an earlier test's -q left."""
    log_to_terminal(logging.INFO)


@pytest.fixture(scope="session")
def kermany(tmp_path_factory):
    return make_kermany(tmp_path_factory.mktemp("kermany") / "chest_xray")


@pytest.fixture(scope="session")
def ham(tmp_path_factory):
    return make_ham10000(tmp_path_factory.mktemp("ham"))


@pytest.fixture(scope="session")
def chexpert(tmp_path_factory):
    return make_chexpert(tmp_path_factory.mktemp("chexpert"))


@pytest.fixture(scope="session")
def nih(tmp_path_factory):
    return make_nih(tmp_path_factory.mktemp("nih"))


@pytest.fixture(scope="session")
def separable(tmp_path_factory):
    """Two classes told apart by where a bright bar sits: easy, but only if the model learns."""
    root = tmp_path_factory.mktemp("separable")
    src = make_kermany(
        root / "src", {"train": {"NORMAL": 60, "PNEUMONIA": 60}, "test": {"NORMAL": 10, "PNEUMONIA": 10}}
    )
    return prepare(src, root / "prepared", min_val_per_class=15).root


@pytest.fixture(scope="session")
def trained_run(separable, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "simplecnn"
    train(TrainConfig(data=str(separable), epochs=3, out=str(run), **FAST))
    return run


@pytest.fixture(scope="session")
def small(tmp_path_factory):
    """A prepared binary dataset of 64 training images: for tests that start real processes."""
    root = tmp_path_factory.mktemp("small")
    src = make_kermany(root / "src", {"train": {"NORMAL": 32, "PNEUMONIA": 32}, "test": {"NORMAL": 4, "PNEUMONIA": 4}})
    return prepare(src, root / "prepared", min_val_per_class=6).root
