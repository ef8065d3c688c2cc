"""The security mutants of scripts/mutants still apply to the code and name real tests, so a
change to a checked line shows up here, in the ordinary suite, and not only in the mutation run."""

import os
import re
from pathlib import Path

import pytest

from tests.mutation.__main__ import REPO, stale_reason
from tests.mutation.mutants import MUTANTS, Mutant


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.id for m in MUTANTS])
def test_each_mutant_applies_exactly_once_and_names_existing_tests(mutant: Mutant) -> None:
    assert stale_reason(mutant, REPO) is None
    assert mutant.new != mutant.old
    assert mutant.tests
    for node in mutant.tests:
        path, _, name = node.partition("::")
        with open(os.path.join(REPO, path)) as fh:
            source = fh.read()
        if name:
            assert re.search(rf"^def {re.escape(name.split('[')[0])}\(", source, re.M), node


def test_mutant_ids_are_unique() -> None:
    ids = [m.id for m in MUTANTS]
    assert len(ids) == len(set(ids))


def test_a_mutant_whose_code_changed_is_stale(tmp_path: Path) -> None:
    (tmp_path / "agent").mkdir()
    m = Mutant("x", "agent/m.py", "if ok:", "if True:", ("tests/unit/test_m.py",))
    (tmp_path / "agent" / "m.py").write_text("if fine:\n    pass\n")
    assert "occurs 0 times in agent/m.py" in str(stale_reason(m, str(tmp_path)))
    (tmp_path / "agent" / "m.py").write_text("if ok:\n    pass\nif ok:\n    pass\n")
    assert "occurs 2 times in agent/m.py" in str(stale_reason(m, str(tmp_path)))
    (tmp_path / "agent" / "m.py").write_text("if ok:\n    pass\n")
    assert stale_reason(m, str(tmp_path)) is None
