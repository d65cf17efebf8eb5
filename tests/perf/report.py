"""The perf suite's Markdown table: ``python -m tests.perf.report [results.json]``.

Reads the JSON the perf session writes (``CONDBENCH_PERF_OUT``, default
``.perf/results.json``) and prints one Markdown table: per case the median seconds of our
implementation and of the reference-structured oracle from the same interleaved rounds, their
ratio (>1 = ours faster), the peak memory of one call of each and their ratio, and the share
of the machine's measured float32 matmul peak that our call reaches (FLOPs from
``torch.utils.flop_counter``). A second table lists the non-timing measurements (bf16
accuracy effect) and a checklist states each target met or missed.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

TARGETS = {
    "cafe": ("speedup >= 3x and peak memory <= 0.3x", lambda r: r["speedup"] >= 3.0 and r["mem_ratio"] <= 0.3),
    "dc": ("speedup >= 1.0x", lambda r: r["speedup"] >= 1.0),
    "dsa": ("speedup >= 1.0x", lambda r: r["speedup"] >= 1.0),
    "dm": ("speedup >= 1.0x", lambda r: r["speedup"] >= 1.0),
    "eval": ("speedup >= 1.3x (20 networks incl. test pass)", lambda r: r["speedup"] >= 1.3),
    # the compiled paths' targets (compiled vs the reference structure, in one run)
    "eval_compiled": ("speedup >= 2.5x", lambda r: r["speedup"] >= 2.5),
    "cafe_compiled": ("speedup >= 3x", lambda r: r["speedup"] >= 3.0),
    "dm_compiled": ("speedup >= 1.5x", lambda r: r["speedup"] >= 1.5),
    "feature_compiled": ("speedup >= 1.5x", lambda r: r["speedup"] >= 1.5),
    "workers": ("speedup >= 1.6x (2 workers on 2 cores)", lambda r: r["speedup"] >= 1.6),
}


def _f(v: Any, fmt: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return format(v, fmt)


def _target(row: Mapping[str, Any]) -> str:
    key = row.get("target")
    if key not in TARGETS:
        return ""
    if row.get("quick"):
        return "n/a (quick)"
    if key == "eval" and not str(row.get("case", "")).startswith("20 nets"):
        return "n/a (<20 nets)"
    return "met" if TARGETS[key][1](row) else "**missed**"


def render(rows: Sequence[Mapping[str, Any]], meta: Mapping[str, Any] | None = None) -> str:
    meta = meta or {}
    timing = [r for r in rows if "speedup" in r]
    other = [r for r in rows if "speedup" not in r]
    out = []
    if timing:
        r0 = timing[0]
        load = meta.get("loadavg")
        out.append(
            f"Device `{r0['device']}`, {r0['threads']} threads, float32 matmul peak "
            f"{r0['matmul_peak_gflops']:.0f} GFLOP/s"
            + (f", load average {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}" if load else "")
            + (f", 1-min load average {meta['load_range'][0]:.1f}-{meta['load_range'][1]:.1f} at the parts' ends"
               if meta.get("load_range") else "")
            + (", QUICK mode (tiny sizes: ratios not meaningful)" if meta.get("quick") or r0.get("quick") else "")
            + "."
        )
        out.append("")
        out.append("| group | case | ours s | ref-struct s | speedup | peak MiB ours / ref | mem ratio | GFLOP/s | % matmul peak | target | notes |")
        out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|")
        for r in timing:
            out.append(
                f"| {r['group']} | {r['case']} | {_f(r['fast_s'], '.3f')} | {_f(r['oracle_s'], '.3f')} | "
                f"{_f(r['speedup'], '.2f')}x | {_f(r['fast_peak_mib'], '.0f')} / {_f(r['oracle_peak_mib'], '.0f')} | "
                f"{_f(r['mem_ratio'], '.2f')} | {_f(r['gflops'], '.1f')} | "
                f"{_f(100 * r['peak_fraction'] if r['peak_fraction'] == r['peak_fraction'] else float('nan'), '.0f')} | "
                f"{_target(r)} | {r.get('notes', '')} |"
            )
        missed = [f"{r['group']} {r['case']}" for r in timing if _target(r) == "**missed**"]
        checked = [r for r in timing if _target(r) in ("met", "**missed**")]
        out.append("")
        out.append(f"Targets: {len(checked) - len(missed)}/{len(checked)} met" + (f"; missed: {', '.join(missed)}" if missed else "") + ".")
    if other:
        out.append("")
        out.append("| measurement | case | value | notes |")
        out.append("|---|---|---|---|")
        for r in other:
            out.append(f"| {r.get('group', '')} | {r.get('case', '')} | {r.get('value', '')} | {r.get('notes', '')} |")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the table of one or more results files (several are merged in order, e.g. the
    parts of a suite run in separate sessions)."""
    import os

    argv = list(sys.argv[1:] if argv is None else argv)
    paths = [Path(a) for a in argv] or [Path(os.environ.get("CONDBENCH_PERF_OUT", ".perf/results.json"))]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        print(f"no perf results at {', '.join(missing)}; run `python -m pytest -m perf tests/perf -p no:cacheprovider` "
              "first (or `tox -e perf`)", file=sys.stderr)
        return 2
    rows: list = []
    loads: list = []
    meta: dict = {}
    for p in paths:
        data = json.loads(p.read_text())
        rows.extend(data.get("rows", []))
        m = data.get("meta", {})
        meta = meta or dict(m)
        if m.get("loadavg"):
            loads.append(m["loadavg"][0])
    if len(loads) > 1:
        meta["loadavg"] = None
        meta["load_range"] = (min(loads), max(loads))
    print(render(rows, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
