"""State files under OVERSEER_HOME are written whole or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from overseer_dagster.files import write_text_atomically


def test_a_write_replaces_the_file_whole_and_leaves_nothing_beside_it(tmp_path: Path) -> None:
    target = tmp_path / "state" / "latest.json"
    write_text_atomically(target, "old")
    write_text_atomically(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["latest.json"]


def test_a_failed_write_keeps_what_was_there_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    taken = tmp_path / "latest.json"
    taken.mkdir()  # a directory where the file should go: the final rename fails
    (taken / "kept").write_text("x")
    with pytest.raises(OSError):
        write_text_atomically(taken, "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.json"] and (taken / "kept").is_file()
