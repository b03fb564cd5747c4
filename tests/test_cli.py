"""The command line: `serve` stays lean, `bench` finds every benchmark."""

from __future__ import annotations

import subprocess
import sys

import pytest

from plantpulse import cli

_PROBE = """
import sys
from plantpulse import cli
import plantpulse.app
try:
    cli.main(["serve", "--help"])
except SystemExit:
    pass
print(sorted(name for name in sys.modules if name.startswith("plantpulse.bench")))
"""


class TestLazyBenchmarks:
    def test_serve_imports_no_benchmark_module(self) -> None:
        result = subprocess.run(  # noqa: S603 - our own interpreter and probe
            [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True
        )
        assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout

    def test_bench_lists_every_benchmark(self, capsys: pytest.CaptureFixture[str]) -> None:
        with pytest.raises(SystemExit):
            cli.main(["bench", "--help"])
        shown = capsys.readouterr().out
        for name in cli.BENCHMARKS:
            assert name in shown
