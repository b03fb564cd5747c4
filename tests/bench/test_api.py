from __future__ import annotations

from pathlib import Path

import pytest

from plantpulse.bench.api import MARK_END, MARK_START, _write


class TestReportOutput:
    def test_empty_output_writes_nothing(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # `--output ''` crashed with IsADirectoryError (Path('') is the current directory).
        monkeypatch.chdir(tmp_path)
        assert _write("", f"{MARK_START}\nx\n{MARK_END}") is False
        assert list(tmp_path.iterdir()) == []

    def test_section_is_replaced_in_place(self, tmp_path: Path) -> None:
        target = tmp_path / "benchmarks.md"
        target.write_text(f"# B\n\n{MARK_START}\nold\n{MARK_END}\n\nafter\n")
        assert _write(str(target), f"{MARK_START}\nnew\n{MARK_END}") is True
        assert target.read_text() == f"# B\n\n{MARK_START}\nnew\n{MARK_END}\n\nafter\n"
