import pytest

from tests.factory import make_chexpert, make_ham10000, make_kermany, make_nih


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
