"""MkDocs hook: publishes the notebooks of ``notebooks/`` as pages of the site.

The site's pages live in ``tutorials/`` (``docs_dir``) and the notebooks in
``notebooks/`` at the repository root, where Colab and the notebook tests expect
them. Instead of copies or symlinks (which go stale or break on some checkouts), this
hook adds every ``notebooks/*.ipynb`` to MkDocs' file collection as
``notebooks/NAME.ipynb``; mkdocs-jupyter then renders each one as the page
``notebooks/NAME/``. Markdown pages link to them as ``notebooks/NAME.ipynb``
(relative to ``tutorials/``), and ``mkdocs serve`` watches the folder
(``watch:`` in ``mkdocs.yml``).

The hook runs before mkdocs-jupyter's ``on_files`` (higher event priority), so the
plugin sees the notebooks and turns them into pages.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = ROOT / "notebooks"
PREFIX = "notebooks"


@event_priority(100)
def on_files(files: Files, config) -> Files:
    """Adds ``notebooks/*.ipynb`` (sorted) to the site's files."""
    for path in sorted(NOTEBOOK_DIR.glob("*.ipynb")):
        src_path = f"{PREFIX}/{path.name}"
        if files.get_file_from_path(src_path) is not None:
            continue  # a page of the same name already exists in docs_dir
        files.append(File(src_path, src_dir=str(ROOT), dest_dir=config["site_dir"],
                          use_directory_urls=config["use_directory_urls"]))
    return files
