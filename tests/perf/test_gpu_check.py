"""The GPU check runs on a CPU-only machine: every CUDA case is skipped with its reason, the
perf part runs (CI sizes) and one Markdown file is written."""

from __future__ import annotations

import pytest
import torch

from tests.perf import gpu_check


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
def test_gpu_check_on_cpu_skips_cuda_cases_and_writes_the_table(tmp_path, monkeypatch):
    out = tmp_path / "gpu.md"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    rc = gpu_check.main(["--out", str(out), "--perf", "quick", "-k", "test_cafe_probe_compiled", "--budget-s", "300"])
    assert rc == 0
    text = out.read_text()
    assert text.startswith("## GPU check: cpu")
    for name, _fn in gpu_check.CHECKS:
        assert f"| {name} | skipped: CUDA is not available on this machine |" in text
    assert "| cafe probe (compiled vs eager) |" in text  # the perf row made it into the file
    assert "(quick)" in text


def test_a_failing_check_is_reported_and_fails_the_run(tmp_path, monkeypatch):
    def broken():
        raise RuntimeError("device lost\ndetails")

    monkeypatch.setattr(gpu_check, "_cuda_reason", lambda: None)
    monkeypatch.setattr(gpu_check, "CHECKS", [("a check", broken)])
    out = tmp_path / "gpu.md"
    assert gpu_check.main(["--out", str(out), "--perf", "none"]) == 1
    text = out.read_text()
    assert "| a check | **ERROR** RuntimeError: device lost |" in text
    assert "perf suite not run (--perf none)" in text
