"""Figures shown in benchmarks/README.md are the ones the benchmark scripts wrote."""

import importlib.util
import json
from pathlib import Path

import pandas as pd

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"
README = (BENCHMARKS / "README.md").read_text()


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def result(name: str) -> dict:
    return json.loads((BENCHMARKS / "results" / name).read_text())


def test_startup_table_matches_the_measurements():
    before, now = result("cli_startup_before.json"), result("cli_startup.json")
    assert script("cli_startup").markdown_table(before, now) in README
    assert max(now["median_seconds"].values()) < 0.5  # what the table claims: every command answers in under 0.5 s


def test_cpu_precision_tables_match_the_measurements():
    precision = script("cpu_precision")
    assert precision.markdown_table(result("cpu_precision.json")) in README
    assert precision.batch_table(result("cpu_precision.json")) in README
    kept = BENCHMARKS / "results" / "cpu-bf16"
    table = script("paired_arms").auroc_table(pd.read_csv(kept / "compare.csv"), pd.read_csv(kept / "stats.csv"))
    assert table in README


def test_recipe_and_cache_tables_match_the_measurements():
    speed, now = script("train_speed"), result("train_speed.json")
    assert speed.recipe_table(now, result("train_speed_before.json")) in README
    assert speed.cache_table(now) in README


def test_finetune_cache_auroc_table_matches_the_study():
    kept = BENCHMARKS / "results" / "finetune-cache"
    runs, stats = pd.read_csv(kept / "compare.csv"), pd.read_csv(kept / "stats.csv")
    assert script("paired_arms").auroc_table(runs, stats, "whole", "cached") in README


def test_folding_tables_match_the_measurements():
    assert script("folding").speed_table(result("folding_speed.json")) in README
    kept = BENCHMARKS / "results" / "folding"
    runs, stats = pd.read_csv(kept / "compare.csv"), pd.read_csv(kept / "stats.csv")
    assert script("paired_arms").auroc_table(runs, stats, "unfolded", "folded") in README


def test_tuned_cell_table_matches_the_measurements():
    assert script("train_speed").tuned_cell_table(result("train_speed.json")) in README


def test_tuning_table_matches_the_studies():
    kept = BENCHMARKS / "results" / "tuning"
    table = script("tuning_fair").tuning_table(kept / "fixed", kept / "tuned")
    assert table in (BENCHMARKS.parent / "README.md").read_text()


def test_resnet50_recipe_tables_match_the_measurements():
    speed, measured = script("train_speed"), result("train_speed_resnet50.json")
    assert speed.fullrun_table(measured) in README
    assert speed.cache_table(measured) in README


def test_self_supervised_throughput_table_matches_the_measurements():
    readme = (BENCHMARKS.parent / "README.md").read_text()
    assert script("selfsupervised").throughput_table(result("ssl_throughput.json")) in readme


def test_model_d_check_tables_match_its_record():
    readme = (BENCHMARKS.parent / "README.md").read_text()
    assert script("selfsupervised").knn_table() in readme


def test_finetune_arithmetic_table_matches_the_measurements():
    assert script("finetune_arithmetic").table(result("finetune_arithmetic.json")) in README
