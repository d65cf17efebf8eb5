"""The README's "adding a method" claim, end to end: a method that learns soft labels and its own
evaluation learning rate, defined in one test-only file (tests/plugins/soft_lr_method.py), runs
through a debug sweep into the main table with no edit anywhere else."""

from __future__ import annotations

import json

import yaml

import tests.plugins.soft_lr_method  # noqa: F401  (registers "softlr")
from analysis.load import load_results
from analysis.tables import main_table
from benchmarks import sweep_cli


def test_a_one_file_method_with_soft_labels_and_learned_lr_reaches_the_main_table(tmp_path):
    spec = {
        "name": "plugin", "datasets": ["digits"], "ipcs": [1],
        "methods": ["random", {"method": "softlr", "budgets": {"iterations": 3}}],
        "eval_archs": ["ConvNet"], "seeds": [0], "num_eval": 1,
        "budgets": {"iterations": 2, "eval_epochs": 2},
        "output": str(tmp_path / "out"), "profile": "cpu", "data_root": str(tmp_path / "data"), "device": "cpu",
    }
    path = tmp_path / "plugin.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert sweep_cli.main(["run", str(path), "--executor", "debug"]) == 0

    records = [json.loads(p.read_text()) for p in (tmp_path / "out" / "records").glob("*.json")]
    (rec,) = [r for r in records if r["method"] == "softlr"]
    assert rec["method_info"]["display"] == "SoftLR (test)" and rec["method_info"]["family"] == "other"
    assert rec["labels"] == "soft"
    assert rec["eval_plan"]["labels"] == "soft" and rec["eval_plan"]["lr_source"] == "learned"

    table = main_table(load_results([tmp_path / "out"]))
    md = table.to_markdown()
    rows = [line for line in md.splitlines() if line.startswith("| SoftLR (test)")]
    assert len(rows) == 1, md
    # ordered by the registry: the coreset row comes before the "other" family
    assert md.index("| Random") < md.index("| SoftLR (test)")
