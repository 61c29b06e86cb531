"""INVARIANTS.md stays true to the suite: every test it names as a proof exists.

Names are read as `tests/<file>.py` or `tests/<file>.py::<name>` (a parametrized id such as `[sqlite]`
dropped); a name is a module-level function, class or alias (`test_x = Machine.TestCase`) of that file.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)(?:::([\w.]+)(?:\[[^\]`]*\])?)?`")


def _top_level_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def test_every_test_named_in_invariants_md_exists() -> None:
    text = (ROOT / "INVARIANTS.md").read_text()
    references = REFERENCE.findall(text)
    assert len(references) > 40, "INVARIANTS.md names fewer proofs than it has rows: did its format change?"
    missing = []
    for file, name in references:
        path = ROOT / file
        if not path.exists():
            missing.append(file)
        elif name and name.split(".")[0] not in _top_level_names(path):
            missing.append(f"{file}::{name}")
    assert not missing, f"INVARIANTS.md names tests that do not exist: {missing}"


def test_every_invariant_row_names_a_proof() -> None:
    rows = [line for line in (ROOT / "INVARIANTS.md").read_text().splitlines() if re.match(r"\| \d+ \|", line)]
    numbers = [int(line.split("|")[1]) for line in rows]
    assert numbers == list(range(1, len(rows) + 1)), "invariant rows are numbered 1..N without gaps"
    assert all(REFERENCE.search(line.split("|")[-2]) for line in rows), [
        line[:80] for line in rows if not REFERENCE.search(line.split("|")[-2])]
