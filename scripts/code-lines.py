#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Counts the Rust code lines of some paths at a git commit, to compare a crate's size before
and after a change without checking either out. Usage:

    code-lines.py COMMIT PATH [PATH ...]

Code lines are lines with code left after removing comments (doc comments included) and
blank lines; `#[cfg(test)]` items, and the files of `#[cfg(test)] mod NAME;`, count as test
lines instead. String literals are blanked before braces are matched; a brace inside a
macro's token stream that is not balanced would throw the test count off (none exist here).
"""
import os
import re
import subprocess
import sys


def git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout


def code_only(text: str) -> list[str]:
    """The lines of `text` without comments, and with string and char literals blanked."""
    text = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group().count("\n"), text, flags=re.S)
    lines = []
    for line in text.split("\n"):
        line = re.sub(r'r#*"[^"]*"#*', '""', line)
        line = re.sub(r'"(\\.|[^"\\])*"', '""', line)
        line = re.sub(r"'(\\.|[^'\\])'", "' '", line)
        lines.append(re.sub(r"//.*", "", line).strip())
    return lines


def test_files(sources: dict[str, str]) -> set[str]:
    """The files that `#[cfg(test)] mod NAME;` declarations bring in."""
    found = set()
    for path, text in sources.items():
        stem = os.path.basename(path)[:-3]
        base = os.path.dirname(path)
        sub = base if stem in ("mod", "lib", "main") else os.path.join(base, stem)
        for m in re.finditer(r"#\[cfg\(test\)\]\s*(?:#\[[^\]]*\]\s*)*mod\s+(\w+)\s*;", text):
            found.add(os.path.join(sub, m.group(1)))
    return found


def count(lines: list[str]) -> tuple[int, int]:
    """Code and test lines of one file's code-only lines."""
    code = tests = depth = 0
    skipping = opened = False
    for line in lines:
        if not skipping and line.startswith("#[cfg(test)]"):
            skipping, depth, opened = True, 0, False
            line = line[len("#[cfg(test)]"):].strip()
            if not line:
                continue
        if not line:
            continue
        if not skipping:
            code += 1
            continue
        tests += 1
        depth += line.count("{") - line.count("}")
        opened = opened or "{" in line
        if (opened and depth <= 0) or (not opened and line.endswith(";")):
            skipping = False
    return code, tests


def main() -> int:
    commit, *paths = sys.argv[1:]
    if not paths:
        print("code-lines.py: give a commit and paths", file=sys.stderr)
        return 2
    names = git("ls-tree", "-r", "--name-only", commit, "--", *paths).split()
    sources = {n: git("show", f"{commit}:{n}") for n in names if n.endswith(".rs")}
    tested = test_files(sources)
    code = tests = total = 0
    for path, text in sources.items():
        total += text.count("\n")
        lines = code_only(text)
        if path[:-3] in tested or any(path.startswith(t + "/") for t in tested):
            tests += sum(1 for line in lines if line)
            continue
        c, t = count(lines)
        code, tests = code + c, tests + t
    print(f"{commit}: {len(sources)} files, {total} lines, {code} code lines, "
          f"{tests} test lines ({' '.join(paths)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
