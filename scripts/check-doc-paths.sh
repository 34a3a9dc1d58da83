#!/usr/bin/env bash
# Fails when README.md or docs/*.md names a repository path that does not exist.
#
# Checked: words inside `backticks` (outside fenced code blocks) and relative link targets
# `[text](target)`. A word counts as a repository path when its first segment is a top-level
# entry of the repository and it contains a `/` or ends in a known file extension. Backticked
# paths are read from the repository root; link targets from the file's own folder. Words with
# placeholders (`<id>`, `{a,b}`, `$VAR`, `...`) are skipped; `*` is expanded as a glob.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 - README.md docs/*.md <<'PY'
import glob
import os
import re
import subprocess
import sys

root = os.getcwd()
try:
    tracked = subprocess.run(
        ["git", "ls-files"], capture_output=True, text=True, check=True
    ).stdout.split()
    top = {path.split("/", 1)[0] for path in tracked}
except (OSError, subprocess.CalledProcessError):
    top = {e for e in os.listdir(root) if e not in (".git", "target", ".cache")}

extensions = (
    ".rs", ".md", ".sh", ".toml", ".yaml", ".yml", ".json", ".py", ".txt", ".lock",
    ".proto", ".png", ".tpl", ".go", ".sum", ".mod", ".pem", ".crt", ".key",
)
code_span = re.compile(r"(`+)(.+?)\1")
link = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
placeholder = re.compile(r"[<>{}$]|\.\.\.|…")


def looks_like_path(word):
    first = word.split("/", 1)[0]
    return first in top and ("/" in word or word.endswith(extensions))


def exists(path):
    if "*" in path or "?" in path:
        return bool(glob.glob(os.path.join(root, path)))
    return os.path.exists(os.path.join(root, path))


def candidates(word):
    # `KEY=path`, `--flag=path`, `path:123`, and punctuation around a word.
    word = word.rsplit("=", 1)[-1]
    word = word.strip("\"'()[],;.")
    word = re.sub(r":\d+(-\d+)?$", "", word)
    if word.startswith("./"):
        word = word[2:]
    return word


missing = []
for doc in sys.argv[1:]:
    with open(doc, encoding="utf-8") as f:
        lines = f.read().splitlines()
    fenced = False
    for number, line in enumerate(lines, 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            continue
        for match in code_span.finditer(line):
            for raw in match.group(2).split():
                word = candidates(raw)
                if not word or placeholder.search(word) or word.startswith("/"):
                    continue
                if looks_like_path(word) and not exists(word):
                    missing.append(f"{doc}:{number}: `{word}`")
        for match in link.finditer(line):
            target = match.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue
            target = target.split("#", 1)[0]
            if not target or placeholder.search(target):
                continue
            resolved = os.path.normpath(os.path.join(os.path.dirname(doc), target))
            if resolved.startswith(".."):
                missing.append(f"{doc}:{number}: ({target}) points outside the repository")
                continue
            if looks_like_path(resolved) and not exists(resolved):
                missing.append(f"{doc}:{number}: ({target}) -> {resolved}")

if missing:
    print("paths named in the docs that do not exist:", file=sys.stderr)
    for entry in missing:
        print(f"  {entry}", file=sys.stderr)
    sys.exit(1)
print(f"ok: every repository path named in {len(sys.argv) - 1} files exists")
PY
