"""Every numbered notebook runs top to bottom on the smoke preset, and is committed clean."""

import nbformat
import pytest

from echat.workbench import display
from echat.workbench import notebooks as runner

NOTEBOOKS = runner.numbered_notebooks()
IDS = [p.stem for p in NOTEBOOKS]
# The training-stage notebooks find or train their stage in RUN_DIR: in this module they share one run
# folder, in order (each trains only its own stage), and the session's smoke corpus (CORPUS); they
# evaluate and show one item per test subset (the smoke model's garbage speech is slow to transcribe). Notebook 11
# (the app) talks to notebook 07's two empathy runs.
STAGE_NOTEBOOKS = ("04", "05", "06", "07", "11")
STAGE_PARAMETERS = {"LIMIT": 1, "EXAMPLES": 1}
# Notebook 10 (evaluation) only reads that folder: it judges notebook 07's empathy run when it is there.
RUN_READING_NOTEBOOKS = ("10",)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    # The kernel inherits this environment: a hub lookup offline hangs ~45 s before failing.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def test_notebooks_are_found():
    assert runner.NOTEBOOK_DIR.is_dir()
    assert [p.name[:2] for p in NOTEBOOKS] == sorted(p.name[:2] for p in NOTEBOOKS)
    assert {"00", "02"} <= {p.name[:2] for p in NOTEBOOKS}


@pytest.fixture(scope="module")
def stage_run_dir(tmp_path_factory):
    """One run folder for notebooks 04-07: stage N's notebook finds stages 0..N-1 trained by the previous ones."""
    return tmp_path_factory.mktemp("stages")


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs_on_smoke(path, tmp_path, request):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    parameters = {"PRESET": "smoke", "RUN_DIR": str(run_dir)}
    if path.name[:2] in STAGE_NOTEBOOKS + RUN_READING_NOTEBOOKS:
        parameters.update(RUN_DIR=str(request.getfixturevalue("stage_run_dir")),
                          CORPUS=str(request.getfixturevalue("smoke_corpus")))
    if path.name[:2] in STAGE_NOTEBOOKS:
        parameters.update(STAGE_PARAMETERS)
    out = runner.run_notebook(path, tmp_path / path.name, parameters)
    executed = nbformat.read(out, as_version=4)
    errors = [o for c in executed.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_is_committed_clean(path):
    notebook = nbformat.read(path, as_version=4)
    dirty = [i for i, c in enumerate(notebook.cells)
             if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert not dirty, f"{path.name}: cells {dirty} have outputs; clear them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_opens_with_what_you_learn_and_a_parameters_cell(path):
    cells = nbformat.read(path, as_version=4).cells
    first_md = next(c for c in cells if c.cell_type == "markdown")
    assert first_md.source.startswith(f"# {path.name[:2]} · ")
    assert "What you will learn" in first_md.source and "How long it takes" in first_md.source
    first_code = next(c for c in cells if c.cell_type == "code")
    assert "parameters" in first_code.metadata.get("tags", [])
    assert "PRESET" in first_code.source and "RUN_DIR" in first_code.source


def test_failing_cell_is_named(tmp_path):
    notebook = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('PRESET = "mini"')
    params.metadata["tags"] = ["parameters"]
    notebook.cells = [params, nbformat.v4.new_code_cell("assert PRESET == 'mini', 'wrong preset'")]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "99_broken.ipynb"
    nbformat.write(notebook, path)
    with pytest.raises(runner.NotebookError, match=r"99_broken\.ipynb: cell .*AssertionError: wrong preset"):
        runner.run_notebook(path, tmp_path / "out.ipynb", {"PRESET": "smoke"}, timeout=120)
    assert (tmp_path / "out.ipynb").is_file()


def test_select_notebooks_by_prefix():
    assert [p.name[:2] for p in runner.select_notebooks(["00"])] == ["00"]
    assert runner.select_notebooks(None) == NOTEBOOKS
    with pytest.raises(ValueError, match="no notebook matches"):
        runner.select_notebooks(["zz"])


def test_index_and_summary(tmp_path):
    results = [runner.NotebookResult("00_tour", True, 1.5),
               runner.NotebookResult("02_x", False, 2.0, "02_x: cell 3 failed")]
    page = runner.write_index(tmp_path, results, "smoke").read_text()
    assert "00_tour" in page and "FAILED" in page and "cell 3 failed" in page
    linked = runner.write_index(tmp_path, results, "smoke", links=[("figures.md", "figures <md>")]).read_text()
    assert '<a href="figures.md">figures &lt;md&gt;</a>' in linked
    text = runner.summary(results)
    assert "00_tour" in text and "FAILED" in text


def test_rendered_table_has_text_and_html():
    view = display.table(["a", "b"], [[1, "<x>"]])
    assert isinstance(view, display.Rendered)
    assert "&lt;x&gt;" in view._repr_html_() and "<x>" in str(view)
