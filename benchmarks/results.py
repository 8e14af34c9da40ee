"""Benchmark results: record a benchmark's JSON with its date, machine and commit, and render the results page.

Each benchmark script (``featurize.py``, ``bags.py``, ``train.py``, ``demo.py``, ``genome_wide.py``) prints its figures as JSON. This script runs
one and keeps what it printed, or takes a JSON file a benchmark wrote (``featurize.py --json``, ``gpu.sh``'s logs),
in ``benchmarks/results/<benchmark>-<date>.json`` together with the date, the machine (CPU, cores, memory, GPU)
and the git commit; ``render`` turns the folder into ``benchmarks/RESULTS.md`` (the docs' Benchmarks page is built
from the same folder)::

    python benchmarks/results.py run featurize -- --encoder efficientnet-lite0 --size 15000 --tile-px 224
    python benchmarks/results.py add featurize benchmarks/_work/gpu/vitl_default.log
    python benchmarks/results.py render

Figures are ratios within one run where the benchmark measures one; absolute speeds hold for the machine named
beside them only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PAGE = HERE / "RESULTS.md"

#: The figures shown per benchmark (key in its JSON → what it is); other keys stay in the JSON files.
KEY_FIGURES = {
    "featurize": {
        "encoder": "encoder",
        "device": "device",
        "precision": "precision",
        "batch_size": "batch",
        "tiling": "tiling",
        "tiles_end_to_end": "tiles",
        "end_to_end_tiles_per_s": "end to end, tiles/s",
        "encoder_only_tiles_per_s": "encoder only, tiles/s",
        "ratio_end_to_end_over_encoder": "end to end ÷ encoder only",
        "read_tiles_per_s_per_worker": "read + decode, tiles/s per worker",
        "peak_rss_mb_main": "peak memory, MB",
        "load_average": "load average during the run",
    },
    "bags": {
        "load_cohort_best_gbps": "bag loading, GB/s",
        "fromfile_gbps": "numpy.fromfile, GB/s",
        "load_vs_fromfile": "bag loading ÷ numpy.fromfile",
        "load_vs_pandas": "bag loading ÷ pandas group-by",
        "peak_rss_vs_bag_bytes": "peak memory ÷ bag bytes",
    },
    "train": {
        "bags": "bags",
        "tiles_per_bag": "tiles per bag",
        "dim": "dimension",
        "lgbm_fit_s": "LightGBM fit, s",
        "ridge_fit_s": "ridge fit, s",
    },
}
KEY_FIGURES["demo"] = {
    "genes": "genes",
    **{
        f"{m}_{k}": f"{m} {label}"
        for m in ("mil", "lgbm", "ridge", "mean")
        for k, label in (
            ("median_r", "median r"),
            ("well_predicted", "well predicted"),
            ("hotspot_median_r", "hotspot r"),
            ("compartment_median_r", "compartment r"),
            ("noise_median_r", "control r"),
        )
    },
    "demo_seconds": "demo, s",
}
KEY_FIGURES["genome_wide"] = {
    "genes_in_targets": "genes in the targets",
    "genes_compared": "genes compared",
    "bags": "bags (patients)",
    "import_s": "targets import, s",
    "import_peak_rss_gb": "targets import, peak RSS GB",
    "compare_s": "compare, s",
    "compare_peak_rss_gb": "compare, peak RSS GB",
    "compare_stages": "compare stages",
    "report_s": "report, s",
    "run_dir_gb": "run folder, GB",
    "report_mb": "report, MB",
    "ridge_median_r": "ridge median r",
    "lgbm_median_r": "lgbm median r",
    "load_average": "load average at the end",
}
#: Tissue tiles of a typical TCGA diagnostic slide at 20x (0.5 µm/px) and 224 px, for the estimates per 100 slides.
TILES_PER_TCGA_SLIDE = 10_000


def machine() -> dict:
    """The machine a benchmark ran on: CPU model, cores, memory, GPU (None without one)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem = None
    gpu = None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        gpu = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.TimeoutExpired):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": mem and round(mem, 1), "gpu": gpu}


def commit() -> str:
    """The git commit of the working tree, ``+dirty`` when it has uncommitted changes."""

    def git(*args):
        return subprocess.run(["git", *args], cwd=HERE, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short=10", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def last_json(text: str) -> dict:
    """The last JSON object printed in ``text`` (a benchmark's output, progress lines and all).

    Examples
    --------
    >>> last_json('step 1\\n{"a": 1}\\nstep 2\\n{\\n  "b": [1, 2]\\n}\\ndone\\n')
    {'b': [1, 2]}
    """
    decoder = json.JSONDecoder()
    pos = len(text)
    while (pos := text.rfind("{", 0, pos)) >= 0:
        if pos == 0 or text[pos - 1] == "\n":
            try:
                obj, _ = decoder.raw_decode(text, pos)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                return obj
    raise ValueError("no JSON object in the benchmark's output")


def record(
    benchmark: str, result: dict, *, args: list[str], seconds: float | None = None, folder: Path = RESULTS
) -> Path:
    """Write ``folder/<benchmark>-<date>.json``: the result with its date, machine and commit."""
    now = datetime.now(timezone.utc)
    entry = {
        "benchmark": benchmark,
        "date": now.isoformat(timespec="seconds"),
        "commit": commit(),
        "machine": machine(),
        "args": args,
        "seconds": seconds and round(seconds, 1),
        "result": result,
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{benchmark}-{now:%Y%m%dT%H%M%S}.json"
    path.write_text(json.dumps(entry, indent=1) + "\n")
    return path


def run(benchmark: str, args: list[str], *, folder: Path = RESULTS) -> Path:
    """Run ``benchmarks/<benchmark>.py args`` and record the JSON it printed."""
    script = HERE / f"{benchmark}.py"
    if not script.exists():
        raise SystemExit(f"no benchmark {script.name}: choose from {', '.join(sorted(KEY_FIGURES))}")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{script.name} failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return record(
        benchmark, last_json(proc.stdout), args=args, seconds=time.perf_counter() - t0, folder=folder
    )


#: Keys of a recorded entry that describe the run rather than hold its figures.
META_KEYS = ("benchmark", "date", "commit", "machine", "args", "seconds", "result", "file")


def load(folder: Path = RESULTS) -> list[dict]:
    """Every recorded result, oldest first. A JSON file a benchmark wrote itself with ``benchmark``, ``date``,
    ``machine`` and ``commit`` at its top level counts too: its other keys are its result."""
    entries = []
    for p in sorted(Path(folder).glob("*.json")):
        e = json.loads(p.read_text())
        if not isinstance(e, dict) or "date" not in e or not isinstance(e.get("machine", {}), dict):
            continue  # not a timing record (validity.json has a page of its own)
        e.setdefault("benchmark", p.stem.split("-")[0])
        e.setdefault("machine", {})
        e.setdefault("commit", "unknown")
        e.setdefault("result", {k: v for k, v in e.items() if k not in META_KEYS})
        e["file"] = p.name
        entries.append(e)
    return sorted(entries, key=lambda e: e["date"])


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "—" if value is None else str(value)


def _machine_text(m: dict) -> str:
    text = f"{m.get('cpu')}, {m.get('cores')} cores, {m.get('memory_gb')} GB"
    return text + (f", {m['gpu']}" if m.get("gpu") else "")


def render(folder: Path = RESULTS, *, heading_level: int = 1) -> str:
    """The results page: per benchmark a table of its key figures, one row per recorded run (newest first), each
    with its date, machine and commit."""
    h = "#" * heading_level
    entries = load(folder)
    out = [
        f"{h} Benchmark results",
        "",
        "Generated by `python benchmarks/results.py render` from the JSON files in `benchmarks/results/`; each row "
        "is one run with the date, machine and commit it ran on. Ratios are measured within one run and hold "
        "across machines; absolute speeds hold for the machine named beside them.",
        "",
    ]
    if not entries:
        return "\n".join([*out, "No results recorded yet: `python benchmarks/results.py run featurize`.", ""])
    for bench in sorted({e["benchmark"] for e in entries}):
        rows = [e for e in reversed(entries) if e["benchmark"] == bench]
        keys = KEY_FIGURES.get(bench) or {
            k: k
            for k, v in rows[0]["result"].items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        if not keys:
            out += [f"{h}# `{bench}`", ""]
            out += [
                f"- {e['date'][:10]}, {_machine_text(e['machine'])}, commit `{e['commit']}`: figures in "
                f"`benchmarks/results/{e['file']}`"
                for e in rows
            ]
            out.append("")
            continue
        out += [
            f"{h}# `{bench}`",
            "",
            "| date | machine | commit | " + " | ".join(keys.values()) + " |",
            "|---" * (3 + len(keys)) + "|",
        ]
        for e in rows:
            figs = " | ".join(_fmt(e["result"].get(k)) for k in keys)
            out.append(f"| {e['date'][:10]} | {_machine_text(e['machine'])} | `{e['commit']}` | {figs} |")
        out.append("")
    return "\n".join(out)


def encoder_speeds(folder: Path = RESULTS) -> dict[str, str]:
    """Encoder → its newest measured end-to-end featurize speed per device, as text for the encoder table."""
    newest: dict[tuple[str, str], dict] = {}
    for e in load(folder):
        r = e["result"]
        if e["benchmark"] == "featurize" and r.get("encoder") and r.get("end_to_end_tiles_per_s"):
            newest[(r["encoder"], "GPU" if str(r.get("device", "")).startswith("cuda") else "CPU")] = e
    speeds: dict[str, list[str]] = {}
    for (enc, dev), e in sorted(newest.items()):
        r = e["result"]
        where = e["machine"].get("gpu") if dev == "GPU" else f"{e['machine'].get('cores')} CPU cores"
        busy = f", load average {r['load_average']:.0f}" if r.get("load_average") is not None else ""
        speeds.setdefault(enc, []).append(
            f"{r['end_to_end_tiles_per_s']:,.1f} tiles/s ({where}, {r.get('precision')}, {e['date'][:10]}{busy})"
        )
    return {k: "; ".join(v) for k, v in speeds.items()}


def estimates(folder: Path = RESULTS, *, dims: dict[str, int] | None = None) -> list[dict]:
    """Per measured encoder and device: hours and disk for 100 slides of :data:`TILES_PER_TCGA_SLIDE` tiles."""
    rows = []
    seen = set()
    for e in reversed(load(folder)):
        r = e["result"]
        if e["benchmark"] != "featurize" or not r.get("end_to_end_tiles_per_s"):
            continue
        dev = "GPU" if str(r.get("device", "")).startswith("cuda") else "CPU"
        if (r["encoder"], dev) in seen:
            continue
        seen.add((r["encoder"], dev))
        tiles = 100 * TILES_PER_TCGA_SLIDE
        dim = (dims or {}).get(r["encoder"])
        rows.append(
            {
                "encoder": r["encoder"],
                "device": e["machine"].get("gpu")
                if dev == "GPU"
                else f"CPU ({e['machine'].get('cores')} cores)",
                "tiles_per_s": r["end_to_end_tiles_per_s"],
                "hours": tiles / r["end_to_end_tiles_per_s"] / 3600,
                "disk_gb": dim and tiles * (dim * 4 + 40) / 1e9,
                "date": e["date"][:10],
                "load_average": r.get("load_average"),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run a benchmark and record its JSON")
    r.add_argument("benchmark", choices=sorted(KEY_FIGURES))
    r.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the benchmark (after --)")
    a = sub.add_parser("add", help="record the JSON in a file a benchmark wrote (or its log)")
    a.add_argument("benchmark", choices=sorted(KEY_FIGURES))
    a.add_argument("file", type=Path)
    p = sub.add_parser("render", help="write the results page")
    p.add_argument("--out", type=Path, default=PAGE)
    ns = ap.parse_args(argv)
    if ns.cmd == "run":
        print(run(ns.benchmark, [x for x in ns.args if x != "--"]))
    elif ns.cmd == "add":
        print(record(ns.benchmark, last_json(ns.file.read_text()), args=[f"from {ns.file.name}"]))
    else:
        ns.out.write_text(render())
        print(ns.out)


if __name__ == "__main__":
    main()
