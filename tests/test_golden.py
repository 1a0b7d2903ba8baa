"""Every golden adapter case, under three chunkings that must agree byte for byte."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.golden_runner import CHUNKINGS, GOLDEN, cases, run_case


@pytest.mark.parametrize("path", cases(), ids=lambda p: f"{p.parent.name}/{p.stem}")
async def test_golden(path: Path, tmp_path: Path) -> None:
    results = [await run_case(path, chunk, tmp_path) for chunk in CHUNKINGS]
    assert all(r == results[0] for r in results), "output depends on where the provider's chunks break"


def test_every_adapter_has_golden_cases() -> None:
    from pixelgate.adapters import REGISTRY

    covered = {p.parent.name for p in cases()}
    missing = set(REGISTRY) - covered - {"openai", "demo"}  # those two: tests/test_relay.py, tests/test_demo.py
    assert not missing, f"adapters without golden cases in {GOLDEN}: {sorted(missing)}"


def test_every_adapter_that_edits_has_edit_cases() -> None:
    import yaml

    from pixelgate.adapters import REGISTRY

    editing = {name for name, cls in REGISTRY.items() if cls.capabilities_for(cls.Options()).edits}
    covered = {p.parent.name for p in cases() if yaml.safe_load(p.read_text()).get("operation") == "edit"}
    missing = editing - covered - {"demo"}  # the demo edits for real: tests/test_edits.py
    assert not missing, f"adapters that edit without edit golden cases: {sorted(missing)}"
