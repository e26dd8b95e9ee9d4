"""The notebooks are committed with outputs stripped (they run under nbmake in the test suite)."""

from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


def test_the_three_notebooks_exist():
    names = [p.name for p in NOTEBOOKS]
    assert names == ["01_quickstart.ipynb", "02_compare_runs.ipynb", "03_custom_objective.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_outputs_are_stripped(path):
    book = nbformat.read(path, as_version=4)
    for index, cell in enumerate(book.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"cell {index}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_short_under_pytest_and_full_otherwise(path):
    """Under nbmake the notebooks take the SMOKE branch; a user's run does the full job."""
    source = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells)
    assert 'SMOKE = "PYTEST_CURRENT_TEST" in os.environ' in source
