"""Why JAX's persistent cache misses on a second start: compare the IR two starts dumped (JAX_DUMP_IR_TO).

    python benchmarks/device/ir_diff.py DIR1 DIR2      # prints which modules differ, and how (first lines)
"""
import difflib
import hashlib
import re
import sys
from pathlib import Path


def modules(d: Path) -> dict[str, str]:
    return {p.name: p.read_text(errors="replace") for p in sorted(d.rglob("*")) if p.is_file()}


def stem(name: str) -> str:
    return re.sub(r"\d+", "#", name)


def main() -> None:
    a, b = modules(Path(sys.argv[1])), modules(Path(sys.argv[2]))
    ha = {hashlib.sha256(t.encode()).hexdigest(): n for n, t in a.items()}
    print(f"{len(a)} files in start 1, {len(b)} in start 2")
    shown = 0
    for name, text in b.items():
        if hashlib.sha256(text.encode()).hexdigest() in ha:
            continue
        peers = [n for n in a if stem(n) == stem(name)] or list(a)
        best = max(peers, key=lambda n: difflib.SequenceMatcher(None, a[n][:20000], text[:20000]).quick_ratio())
        diff = [ln[:300] for ln in difflib.unified_diff(a[best].splitlines(), text.splitlines(), lineterm="", n=0)
                if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
        print(f"DIFFERS: {name} (closest in start 1: {best}): {len(diff)} changed lines")
        if shown < 4:
            print("\n".join(diff[:12]))
            shown += 1


if __name__ == "__main__":
    main()
