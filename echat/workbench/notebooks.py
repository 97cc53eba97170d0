"""Run the numbered notebooks headless: :func:`run_notebook` executes one with papermill (parameters
injected into the cell tagged ``parameters``, working directory = the notebook's folder, as in
JupyterLab); :func:`run_all` runs every ``notebooks/NN_*.ipynb``, renders each to HTML and writes an
``index.html``. ``echat demo`` (:mod:`echat.workbench.demo`) runs them after the training recipe and its
evaluation; the notebook tests run them on the smoke preset.

papermill, nbclient and nbconvert (the ``dev`` extra) are imported inside the functions that need them.
"""

from __future__ import annotations

import html
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from echat.workbench.display import table

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"
KERNEL_NAME = "python3"
_NUMBERED = re.compile(r"\d\d_.+\.ipynb")


class NotebookError(RuntimeError):
    """A notebook that failed to run; the message names the notebook and the failing cell."""


@dataclass
class NotebookResult:
    """Outcome of one notebook run: ``seconds`` of wall time, ``error`` empty when ``ok``."""

    name: str
    ok: bool
    seconds: float
    error: str = ""
    notebook: Path | None = None  # the executed copy
    html: Path | None = None  # its HTML rendering


def numbered_notebooks(folder: Path = NOTEBOOK_DIR) -> list[Path]:
    """The ``NN_*.ipynb`` notebooks of ``folder``, sorted by name (so by number)."""
    return sorted(p for p in Path(folder).glob("*.ipynb") if _NUMBERED.fullmatch(p.name))


def run_notebook(path: str | Path, out_path: str | Path, parameters: dict, timeout: int = 1800) -> Path:
    """Execute ``path`` with papermill into ``out_path`` and return ``out_path``.

    ``parameters`` replace the defaults of the cell tagged ``parameters``; the kernel is ``python3``
    and starts in the notebook's own folder; ``timeout`` is in seconds per cell. Raises
    :class:`NotebookError` naming the notebook and the failing cell (the executed copy is still
    written, with the error in place).
    """
    import papermill as pm
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    path, out_path = Path(path).resolve(), Path(out_path).resolve()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        pm.execute_notebook(str(path), str(out_path), parameters=parameters, kernel_name=KERNEL_NAME,
                            cwd=str(path.parent), execution_timeout=timeout, progress_bar=False)
    except pm.PapermillExecutionError as err:
        first_line = (err.source or "").strip().splitlines()[:1]
        raise NotebookError(f"{path.name}: cell {err.cell_index} (execution {err.exec_count}, "
                            f"{first_line[0] if first_line else 'empty'!r}) failed: "
                            f"{err.ename}: {err.evalue}") from None
    except (CellTimeoutError, DeadKernelError) as err:
        raise NotebookError(f"{path.name}: {type(err).__name__}: {err}") from None
    return out_path


def select_notebooks(only: Sequence[str] | None = None, folder: Path = NOTEBOOK_DIR) -> list[Path]:
    """Numbered notebooks whose name starts with one of ``only`` (e.g. ``["00", "02"]``); all if empty."""
    notebooks = numbered_notebooks(folder)
    if not only:
        return notebooks
    chosen = [p for p in notebooks if any(p.name.startswith(prefix) for prefix in only)]
    missing = [prefix for prefix in only if not any(p.name.startswith(prefix) for p in notebooks)]
    if missing:
        names = ", ".join(p.name for p in notebooks) or "none"
        raise ValueError(f"no notebook matches {missing}; available: {names}")
    return chosen


def run_all(out_dir: str | Path, preset: str = "mini", only: Sequence[str] | None = None,
            links: Sequence[tuple[str, str]] = ()) -> list[NotebookResult]:
    """Run the numbered notebooks (or those matching ``only``) with ``PRESET`` and ``RUN_DIR`` set.

    Executed copies and their HTML go to ``out_dir``, with ``out_dir/index.html`` linking them (and
    ``links``: (file relative to ``out_dir``, title) pairs, e.g. the demo's figures).
    ``RUN_DIR`` is passed as an absolute path, since notebooks run in their own folder.
    """
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    progress = tqdm(select_notebooks(only), desc=f"notebooks ({preset})", unit="nb")
    for path in progress:
        progress.set_postfix_str(path.name)
        results.append(_run_one(path, out_dir, preset))
    progress.close()
    write_index(out_dir, results, preset, links)
    return results


def _run_one(path: Path, out_dir: Path, preset: str) -> NotebookResult:
    """Run and render one notebook, turning a failure into a result instead of an exception."""
    out = out_dir / path.name
    start = time.perf_counter()
    error = ""
    try:
        run_notebook(path, out, {"PRESET": preset, "RUN_DIR": str(out_dir)})
    except NotebookError as err:
        error = str(err)
    seconds = time.perf_counter() - start
    page = render_html(out) if out.is_file() else None
    return NotebookResult(path.stem, not error, seconds, error, out if out.is_file() else None, page)


def render_html(notebook: Path) -> Path | None:
    """Write ``notebook`` as HTML next to it (nbconvert's ``HTMLExporter``); None if that fails."""
    from nbconvert import HTMLExporter

    try:
        body, _ = HTMLExporter().from_filename(str(notebook))
    except (OSError, ValueError, RuntimeError, KeyError) as err:  # keep the run's own result
        print(f"warning: could not render {notebook.name} to HTML: {err}", file=sys.stderr)
        return None
    page = notebook.with_suffix(".html")
    page.write_text(body, encoding="utf-8")
    return page


def write_index(out_dir: Path, results: list[NotebookResult], preset: str,
                links: Sequence[tuple[str, str]] = ()) -> Path:
    """``out_dir/index.html``: one row per notebook with a link, status and wall time; ``links``
    ((file, title) pairs) are listed above the table."""
    extra = " · ".join(f'<a href="{html.escape(target)}">{html.escape(title)}</a>' for target, title in links)
    rows = []
    for r in results:
        name = html.escape(r.name)
        link = f'<a href="{html.escape(r.html.name)}">{name}</a>' if r.html else name
        status = "ok" if r.ok else "FAILED"
        rows.append(f"<tr><td>{link}</td><td class='{status.lower()}'>{status}</td>"
                    f"<td>{r.seconds:.1f} s</td><td><pre>{html.escape(r.error)}</pre></td></tr>")
    total = sum(r.seconds for r in results)
    page = (f"<!doctype html><meta charset='utf-8'><title>echat notebooks ({html.escape(preset)})</title>"
            "<style>body{font-family:sans-serif}td{padding:2px 12px;vertical-align:top}"
            ".ok{color:#070}.failed{color:#b00;font-weight:bold}pre{margin:0;white-space:pre-wrap}</style>"
            f"<h1>echat notebooks, preset <code>{html.escape(preset)}</code></h1>"
            f"<p>{sum(r.ok for r in results)}/{len(results)} ok, {total:.1f} s in all, "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}</p>" + (f"<p>{extra}</p>" if extra else "")
            + "<table><tr><th>notebook</th><th>status</th><th>wall time</th><th>error</th></tr>"
            + "".join(rows) + "</table>")
    index = out_dir / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


def summary(results: list[NotebookResult]) -> str:
    """A plain-text table of the results (name, status, seconds, first line of the error)."""
    rows = [[r.name, "ok" if r.ok else "FAILED", f"{r.seconds:.1f}", (r.error.splitlines() or [""])[0]]
            for r in results]
    return table(["notebook", "status", "seconds", "error"], rows).text
