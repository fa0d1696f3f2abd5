"""Side by side: `decode_step.py --roofline` runs of the same shapes under different settings.

    python benchmarks/compare_decode.py A.json B.json [...] [--labels a b ...] [--out cmp.json] [--markdown]

The device scripts that A/B a setting (fused_decode.sh, xla_flags.sh, decode_split.sh, matmul_output.sh)
write one JSON per setting; this prints the step time of every (batch, context, page-table width) each
run has, with the fraction of the roofline and the ratio to the first run, then, for the profiled
steps, GPU microseconds and launches per kernel kind (the small kernels a fusion should remove show as
fewer "other fusions" launches).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def _rows(run: dict) -> dict[tuple, dict]:
    return {(r["batch"], r["context"], r.get("page_table_width")): r for r in run["rows"]}


def compare(runs: list[dict], labels: list[str]) -> dict:
    """{"steps": [...], "profiles": [...]}: one entry per shape (in the first run's order) with every run's
    figures; shapes some run lacks are left out of the steps table."""
    tables = [_rows(r) for r in runs]
    steps, profiles = [], []
    for key in tables[0]:
        if not all(key in t for t in tables):
            continue
        cells = [t[key] for t in tables]
        base = cells[0]["device_ms"]
        steps.append({"batch": key[0], "context": key[1], "page_table_width": key[2],
                      "roofline_ms": cells[0].get("roofline_ms"),
                      "runs": {lab: {"ms": c["device_ms"], "fraction": c.get("fraction"), "vs_first": c["device_ms"] / base}
                               for lab, c in zip(labels, cells)}})
        if all(isinstance(c.get("profile"), dict) for c in cells):
            kinds = sorted({k for c in cells for k in c["profile"]["kinds_us"]})
            profiles.append({"batch": key[0], "context": key[1], "kinds": kinds,
                             "attention_kernels": {lab: attention_kernels(c) for lab, c in zip(labels, cells)},
                             "runs": {lab: {k: (c["profile"]["kinds_us"].get(k, 0.0),
                                                c["profile"].get("launches", {}).get(k))
                                            for k in kinds} for lab, c in zip(labels, cells)}})
    settings = {lab: r.get("settings") for lab, r in zip(labels, runs)}
    return {"labels": labels, "settings": settings, "steps": steps, "profiles": profiles}


def attention_kernels(cell: dict) -> list[str]:
    """Names of the profiled step's attention kernels: they show what the setting traced to (the
    fused decode kernel's `_fused`, a flash-decoding split's `_s4`)."""
    return sorted(k for k in cell["profile"].get("kernels_us", {}) if "attention" in k)


def print_tables(cmp: dict) -> None:
    labels = cmp["labels"]
    for lab in labels:
        if cmp["settings"].get(lab) is not None:
            print(f"{lab}: {cmp['settings'][lab]}")
    head = f"{'batch':>5} {'ctx':>6} {'width':>5} {'roofline':>8} " + " ".join(f"{lab[:22]:>22}" for lab in labels)
    print(head)
    for s in cmp["steps"]:
        cells = []
        for lab in labels:
            r = s["runs"][lab]
            frac = f"{r['fraction']:.0%}" if r["fraction"] is not None else "-"
            cells.append(f"{r['ms']:7.3f} {frac:>4} x{r['vs_first']:.3f}".rjust(22))
        roof = f"{s['roofline_ms']:.3f}" if s["roofline_ms"] is not None else "-"
        print(f"{s['batch']:>5} {s['context']:>6} {s['page_table_width'] or '-':>5} {roof:>8} " + " ".join(cells))
    for p in cmp["profiles"]:
        print(f"\nbatch {p['batch']} x {p['context']}: GPU us (launches) per kernel kind")
        print(f"{'kind':<24}" + " ".join(f"{lab[:18]:>18}" for lab in labels))
        for k in p["kinds"]:
            cells = []
            for lab in labels:
                us, n = p["runs"][lab][k]
                cells.append((f"{us:9.1f}" + (f" ({n:.0f})" if n is not None else "")).rjust(18))
            print(f"{k:<24}" + " ".join(cells))
        for lab in labels:
            print(f"  {lab}: {', '.join(p['attention_kernels'][lab]) or '-'}")


def markdown(cmp: dict) -> str:
    """The steps table as Markdown, for docs/perf.md: a column per run, ms (fraction of the roofline)."""
    labels = cmp["labels"]
    lines = ["| batch | context | page-table width | roofline ms | " + " | ".join(labels) + " |",
             "| ---: | ---: | ---: | ---: |" + " --- |" * len(labels)]
    for s in cmp["steps"]:
        cells = [f"{s['runs'][lab]['ms']:.2f}" + (f" ({s['runs'][lab]['fraction']:.0%})"
                                                   if s["runs"][lab]["fraction"] is not None else "")
                 for lab in labels]
        roof = f"{s['roofline_ms']:.2f}" if s["roofline_ms"] is not None else "-"
        width = s["page_table_width"] or "-"
        lines.append(f"| {s['batch']} | {s['context']} | {width} | {roof} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="decode_step.py --roofline JSON files")
    ap.add_argument("--labels", nargs="+", help="a name per run (default: the file names)")
    ap.add_argument("--out", type=Path, help="write the comparison as JSON")
    ap.add_argument("--markdown", action="store_true", help="also print the steps table as Markdown")
    args = ap.parse_args()
    labels = args.labels or [p.stem for p in args.runs]
    if len(labels) != len(args.runs):
        ap.error(f"{len(labels)} labels for {len(args.runs)} runs")
    cmp = compare([json.loads(p.read_text()) for p in args.runs], labels)
    if not cmp["steps"]:
        raise SystemExit("the runs share no (batch, context, width) shape")
    print_tables(cmp)
    if args.markdown:
        print("\n" + markdown(cmp))
    if args.out:
        args.out.write_text(json.dumps(cmp, indent=1))


if __name__ == "__main__":
    main()
