#!/usr/bin/env python3
"""Lists cycles between the top-level modules of each crate in the workspace.

    python3 scripts/module-cycles.py [CRATE_DIR...]     (default: every crate with a src/)

A module `a` depends on `b` when a file of `a` (outside its `#[cfg(test)]` parts) names
`crate::b`, in a `use` or a path. Prints each strongly connected group of two or more modules
with one edge of each direction as evidence, and exits 1 if there is any (0 otherwise).
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def top_module(src: Path, file: Path) -> str:
    rel = file.relative_to(src).with_suffix("")
    parts = rel.parts
    if parts[0] in ("lib", "main"):
        return "(root)"
    return parts[0]


def edges(src: Path):
    found = {}
    for file in src.rglob("*.rs"):
        if "tests" in file.relative_to(src).parts[:-1] or file.name == "tests.rs":
            continue  # test modules may reach anywhere
        text = file.read_text()
        # Drop `#[cfg(test)] mod tests { ... }` bodies: everything after the marker.
        text = text.split("#[cfg(test)]")[0]
        text = re.sub(r"//[^\n]*", "", text)
        here = top_module(src, file)
        names = set(re.findall(r"\bcrate::([a-z_][a-z0-9_]*)", text))
        # `use crate::{a, b::c}` groups
        for group in re.findall(r"\bcrate::\{([^}]*)\}", text):
            names.update(re.findall(r"(?:^|,)\s*([a-z_][a-z0-9_]*)", group))
        for name in names:
            is_module = (src / f"{name}.rs").exists() or (src / name / "mod.rs").exists()
            if name != here and is_module:
                found.setdefault(here, {}).setdefault(name, file.relative_to(ROOT))
    return found


def cycles(graph):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def main():
    crates = [Path(a) for a in sys.argv[1:]] or sorted(
        p.parent for p in ROOT.glob("*/src") if p.is_dir()
    )
    bad = 0
    for crate in crates:
        src = (ROOT / crate / "src") if not (crate / "src").exists() else crate / "src"
        graph = edges(src)
        for group in cycles(graph):
            bad += 1
            print(f"{crate.name}: cycle between {', '.join(group)}")
            for a in group:
                for b, where in graph.get(a, {}).items():
                    if b in group:
                        print(f"    {a} -> {b}  ({where})")
    if not bad:
        print("no module cycles")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
