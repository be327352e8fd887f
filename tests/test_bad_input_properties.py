"""Property-based tests of the readers a user feeds by hand: the CSV, the run config and the study file.

Whatever the bytes, columns or value types, each reader either accepts the file or refuses it as bad input
(``LowmedError``, exit 2); no other exception gets out. ``LOWMED_HYPOTHESIS_EXAMPLES`` sets the examples per
property (150 by default; a longer search: 2000).
"""

import os
import string

import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lowmed.cli import main
from lowmed.config import TrainConfig
from lowmed.data.formats import CsvColumns, read_source
from lowmed.errors import LowmedError
from lowmed.experiment.study import load_study
from tests.factory import write_image

EXAMPLES = settings(
    max_examples=int(os.environ.get("LOWMED_HYPOTHESIS_EXAMPLES", 150)),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

names = st.text(alphabet=string.ascii_letters + string.digits + " _-.", min_size=1, max_size=12)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True), names, st.just("")
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(names, inner, max_size=3))


def accepted_or_refused(read) -> None:
    """``read()`` returns, or raises LowmedError; anything else fails the test."""
    try:
        read()
    except LowmedError:
        pass


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("csv-images")
    for index in range(3):
        write_image(folder / f"{index}.png", index)
    return folder


@EXAMPLES
@given(content=st.binary(max_size=400))
def test_random_bytes_as_a_csv_are_read_or_refused(tmp_path, content):
    path = tmp_path / "labels.csv"
    path.write_bytes(content)
    accepted_or_refused(lambda: read_source(path, "csv"))


@EXAMPLES
@given(
    columns=st.lists(st.sampled_from(["path", "label", "group", "split", "x", ""]) | names, max_size=5),
    rows=st.lists(st.lists(scalars, min_size=0, max_size=6), max_size=6),
    group=st.sampled_from([None, "group"]),
    split=st.sampled_from([None, "split"]),
)
def test_random_columns_and_cells_in_a_csv_are_read_or_refused(images, columns, rows, group, split):
    path = images / "labels.csv"
    pd.DataFrame([row[: len(columns)] + [None] * (len(columns) - len(row)) for row in rows], columns=columns).to_csv(
        path, index=False
    )
    accepted_or_refused(lambda: read_source(path, "csv", csv_columns=CsvColumns(group=group, split=split)))


@EXAMPLES
@given(content=st.binary(max_size=300))
def test_random_bytes_as_a_train_config_are_read_or_refused(tmp_path, content):
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    accepted_or_refused(lambda: TrainConfig.from_yaml(path).validate())


@EXAMPLES
@given(
    options=st.dictionaries(
        st.sampled_from(sorted(TrainConfig.__dataclass_fields__)) | names, values, min_size=1, max_size=6
    )
)
def test_random_keys_and_types_in_a_train_config_are_read_or_refused(tmp_path, options):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(options))
    accepted_or_refused(lambda: TrainConfig.from_yaml(path).validate())


study_keys = st.sampled_from(["name", "datasets", "arms", "per_class", "seeds", "train", "out", "split", "tune"])


@EXAMPLES
@given(study=st.dictionaries(study_keys | names, values, max_size=7))
def test_random_study_files_are_read_or_refused(tmp_path, study):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    accepted_or_refused(lambda: load_study(path))


@EXAMPLES
@given(
    datasets=st.lists(st.dictionaries(st.sampled_from(["name", "path", "format", "external"]), values), max_size=2),
    arms=st.lists(st.dictionaries(st.sampled_from(["name", "model", "weights", "options", "pretrain"]), values)),
    sizes=st.lists(values, max_size=3),
)
def test_random_study_fields_are_read_or_refused(tmp_path, datasets, arms, sizes):
    path = tmp_path / "study.yaml"
    study = {"name": "s", "datasets": datasets, "arms": arms, "per_class": sizes, "seeds": sizes}
    path.write_text(yaml.safe_dump(study))
    accepted_or_refused(lambda: load_study(path))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(min_size=1, max_size=200))
def test_the_command_line_answers_random_files_with_exit_2(tmp_path, capsys, content):
    """Through ``main`` as a user runs it: the refusal is exit 2 (a crash would be exit 1)."""
    (tmp_path / "study.yaml").write_bytes(content)
    (tmp_path / "labels.csv").write_bytes(content)
    for argv in (
        ["experiment", str(tmp_path / "study.yaml"), "--dry-run", "-q"],
        ["prepare", str(tmp_path / "labels.csv"), "-o", str(tmp_path / "out"), "-q"],
    ):
        with pytest.raises(SystemExit) as exit:
            main(argv)
        assert exit.value.code == 2, (argv, capsys.readouterr().err)
