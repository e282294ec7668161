"""The phase table is the migration: docs/design.md shows it as the engine walks it."""

from pathlib import Path

from cloudmig.agent.api import Mode
from cloudmig.migration.engine import PHASES, State, phase_table_markdown
from cloudmig.migration.faults import Faults

import pytest

from cloudmig import errors

DESIGN = Path(__file__).resolve().parents[1] / "docs" / "design.md"


def test_design_doc_shows_the_phase_table():
    assert phase_table_markdown() in DESIGN.read_text()


def test_undos_end_at_the_resume_and_the_freeze_is_one_window():
    names = [p.name for p in PHASES]
    resume = next(i for i, p in enumerate(PHASES) if p.reaches is State.RESUMED)
    assert all(p.undo is None for p in PHASES[resume:]), "no undo after the point of no return"
    frozen = [i for i, p in enumerate(PHASES) if p.frozen]
    assert frozen == list(range(frozen[0], resume + 1)), "the freeze is contiguous and ends at the resume"
    assert [p.name for p in PHASES if Mode.STOPCOPY not in p.modes] == ["lazy"]
    assert names[0] == "preflight" and names[-1] == "cleanup"


def test_fault_points_are_checked():
    phases = [p.name for p in PHASES]
    faults = Faults.parse("before-dump:destination:kill-agent, after-restore:source:x", phases)
    assert [f.point for f in faults.faults] == ["before-dump", "after-restore"]
    for bad in ("before-freeze:destination:kill-agent", "during-dump:source:x", "before-dump:nowhere:x",
                "before-dump:source"):
        with pytest.raises(errors.ConfigError):
            Faults.parse(bad, phases)
