"""``lowmed experiment STUDY.yaml``: the three-way study as one resumable command, ending in a report.

A study is a grid: datasets × arms (a named model + weight source) × per-class sizes × seeds, trained under
identical conditions (the same subsets, augmentation, epoch budget and evaluation for every arm). An arm's weights
may be a **pretrain stage**: a run on a broader medical corpus, trained once and then fine-tuned on every small
subset (Model C). The concerns live apart: ``study`` reads and checks the file, ``plan`` names the stages and runs,
``execute`` trains and evaluates them (under torchrun too), ``report`` writes ``report.md``.
"""

from lowmed.experiment.execute import StudyResult, run_experiment
from lowmed.experiment.study import Study, load_study

__all__ = ["Study", "StudyResult", "load_study", "run_experiment"]
