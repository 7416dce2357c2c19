"""docs/benchmarks.md and the README's demo table are rendered from docs/results/*.json and cannot
drift from them; the renderer shows each file's command, commit, machine, wall time and tables; and
bench/accuracy.py, which writes the accuracy files, trains the demo preset as ``brainage demo`` does
and keeps its evaluation seeds apart from the development seed."""

from __future__ import annotations

import argparse
import json
import runpy
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RENDERER = runpy.run_path(str(ROOT / "docs" / "make_benchmarks_md.py"))
sys.path.insert(0, str(ROOT / "bench"))
from results import display, write_results  # noqa: E402  (bench/ is a folder of scripts, not a package)

from brainage.training import TrainConfig  # noqa: E402  (after the path of bench/, as above)

REGENERATE = ".venv/bin/python docs/make_benchmarks_md.py"


def test_benchmarks_md_is_rendered_from_the_results_files() -> None:
    expected = RENDERER["render_benchmarks"]()
    assert (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8") == expected, f"docs/benchmarks.md is stale: run {REGENERATE}"


def test_the_readme_demo_table_is_rendered_from_the_results_files() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    expected = RENDERER["with_readme_block"](readme, RENDERER["render_readme_block"]())
    expected = RENDERER["with_readme_block"](expected, RENDERER["render_retest_block"](), "retest")
    expected = RENDERER["with_readme_block"](expected, RENDERER["render_train_groups_block"](), "train_groups")
    assert readme == expected, f"README.md's results blocks are stale: run {REGENERATE}"


def _records() -> list[dict[str, object]]:
    return [
        {"predictor": "resnet (network)", "n": 40, "mae": 3.456, "mae_low": 3.1, "mae_high": 3.81, "diff": -0.5, "diff_low": -0.9, "diff_high": -0.1, "ahead": True},
        {"predictor": "baseline: mean age", "n": 40, "mae": 6.0, "mae_low": 5.5, "mae_high": 6.6, "gap_fidelity": None},
    ]  # fmt: skip  # a table: one record per line


def test_display_joins_each_value_with_its_interval() -> None:
    rows = display(_records())
    assert rows[0] == {"predictor": "resnet (network)", "n": "40", "MAE": "3.46 [3.10, 3.81]", "Δ MAE vs best baseline": "-0.50 [-0.90, -0.10]", "ahead": "yes"}
    assert rows[1]["Δ MAE vs best baseline"] == "–" and rows[1]["ahead"] == "–"
    assert all("gap fidelity" not in row for row in rows)  # no record has a value for it


def test_a_results_file_is_rendered_with_where_it_came_from(tmp_path: Path) -> None:
    results = tmp_path / "results"
    assert RENDERER["NOT_MEASURED"] in RENDERER["render_benchmarks"](results)
    tables = [{"title": "demo cohort: the network against the best baseline", "records": _records(), "notes": ["ahead per scan: 1 of 1 seeds"]}]
    argv = [".venv/bin/python", "bench/accuracy.py", "--preset", "demo", "--eval-seeds", "1"]
    write_results(results / "accuracy-demo-eval-seeds-1.json", tables, {"cohort": 12.0, "train resnet (standard)": 125.4}, "32-true", argv)
    write_results(results / "something-new.json", [{"title": "another table", "records": [{"x": 1.0}]}], {}, "32-true", ["bench/x.py"])
    document = json.loads((results / "accuracy-demo-eval-seeds-1.json").read_text(encoding="utf-8"))
    assert document["commit"]["sha"] and document["machine"]["cores"] >= 1 and document["precision"] == "32-true"

    page = RENDERER["render_benchmarks"](results)
    assert page == RENDERER["render_benchmarks"](results)  # deterministic
    demo = page.split("## Accuracy: the demo cohort on evaluation seeds")[1].split("\n## ")[0]
    assert RENDERER["NOT_MEASURED"] not in demo
    assert " ".join(argv) in demo and document["commit"]["sha"][:10] in demo and document["machine"]["cpu"] in demo
    assert "train resnet (standard) 2 min 05 s" in demo and "| resnet (network) | 40 | 3.46 [3.10, 3.81] |" in demo
    assert "- ahead per scan: 1 of 1 seeds" in demo
    assert "## Other results" in page and "another table" in page.split("## Other results")[1]

    block = RENDERER["render_readme_block"](results)
    assert "3.46 [3.10, 3.81]" in block and " ".join(argv) in block
    readme = "# x\n\n<!-- results:demo -->\nold\n<!-- /results:demo -->\n\nrest\n"
    rendered = RENDERER["with_readme_block"](readme, block)
    assert "old" not in rendered and rendered.endswith("<!-- /results:demo -->\n\nrest\n") and block in rendered


def test_bench_accuracy_trains_the_demo_preset_as_brainage_demo_does() -> None:
    from brainage.demo import TRAINING

    accuracy = runpy.run_path(str(ROOT / "bench" / "accuracy.py"))
    args = argparse.Namespace(preset="demo", model=None, epochs=None, folds=None, repeats_per_session=None, schedule="plateau", init=None, set=[])
    config = accuracy["_network_config"](args, 7)
    demo = TRAINING["demo"]
    assert (config.model, config.epochs, config.folds, config.batch_size, config.seed) == (demo["model"], demo["epochs"], demo["folds"], demo["batch_size"], 7)
    other = accuracy["_network_config"](argparse.Namespace(**{**vars(args), "preset": "oasis2", "epochs": 3, "folds": 0}), 1)
    assert (other.model, other.epochs, other.folds) == (TrainConfig().model, 3, None)


def test_bench_accuracy_refuses_the_development_seed_as_an_evaluation_seed(tmp_path: Path) -> None:
    command = [sys.executable, "bench/accuracy.py", "--out", str(tmp_path), "--seed", "2", "--eval-seeds", "1", "2"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "2 is the development --seed" in result.stderr
    assert not any(tmp_path.iterdir())


def test_the_readme_retest_table_is_rendered_from_the_latest_retest_file(tmp_path: Path) -> None:
    results = tmp_path / "results"
    assert RENDERER["NOT_MEASURED"].lower() in RENDERER["render_retest_block"](results)
    record = {
        "preparation": "no session reuse",
        "quantity": "gap (brain age − age)",
        "within_sd": 0.81,
        "icc2": 0.912,
        "icc2_low": 0.88,
        "icc2_high": 0.94,
    }
    write_results(results / "retest-x.json", [{"title": "Test–retest", "records": [record]}], {}, "", ["bench/retest.py", "--label", "x"])
    block = RENDERER["render_retest_block"](results)
    assert "| no session reuse | gap (brain age − age) | 0.81 | 0.91 [0.88, 0.94] |" in block and "bench/retest.py --label x" in block
    readme = "a\n<!-- results:retest -->\nold\n<!-- /results:retest -->\n"
    assert RENDERER["with_readme_block"](readme, block, "retest") == f"a\n<!-- results:retest -->\n{block}\n<!-- /results:retest -->\n"


def test_the_readme_training_groups_table_is_the_first_table_of_the_latest_file(tmp_path: Path) -> None:
    results = tmp_path / "results"
    assert RENDERER["NOT_MEASURED"].lower() in RENDERER["render_train_groups_block"](results)
    summary = {
        "seed": 1,
        "level": "scan",
        "delta_fidelity": -0.16,
        "delta_fidelity_low": -0.31,
        "delta_fidelity_high": -0.03,
        "fidelity favours": "every group",
    }
    tables = [{"title": "controls only minus every group", "records": [summary], "notes": ["paired"]}, {"title": "seed 1", "records": [{"seed": 1}]}]
    write_results(results / "train_groups-demo-eval-seeds-1.json", tables, {}, "", ["bench/train_groups.py", "--seeds", "1"])
    block = RENDERER["render_train_groups_block"](results)
    assert "| 1 | scan | -0.16 [-0.31, -0.03] | every group |" in block and "- paired" in block and "seed 1**" not in block
