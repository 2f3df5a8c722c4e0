"""The shape of the code a newcomer must read: function-level imports, the longest functions, the largest modules.

    python tests/benchmarks/code_shape.py            # bench/ and techniques/ of the checkout it runs in
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path.cwd()


def main(packages: list[str]) -> None:
    files = sorted(p for package in packages for p in (ROOT / package).rglob("*.py"))
    functions, modules, local_imports = [], [], 0
    for path in files:
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text)
        modules.append((len(text.splitlines()), path.relative_to(ROOT)))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.append((node.end_lineno - node.lineno + 1, f"{path.relative_to(ROOT)}:{node.name}"))
                local_imports += sum(isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(node))
    print(f"function-level imports: {local_imports}")
    print("longest functions (lines):")
    for n, name in sorted(functions, reverse=True)[:10]:
        print(f"  {n:4d}  {name}")
    print("largest modules (lines):")
    for n, name in sorted(modules, reverse=True)[:5]:
        print(f"  {n:5d}  {name}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["bench", "techniques"])
