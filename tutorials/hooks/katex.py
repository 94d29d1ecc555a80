"""MkDocs hook: the site serves KaTeX itself, so that its math renders offline.

``pymdownx.arithmatex`` (generic mode) leaves the math of the pages as ``\\(...\\)`` and
``\\[...\\]`` inside ``arithmatex`` elements; KaTeX's auto-render extension typesets
them in the browser (``javascripts/katex.js``). KaTeX comes from the npm package
pinned in ``tutorials/vendor/package.json`` (exact version and hash in its
``package-lock.json``): when ``tutorials/vendor/node_modules`` lacks it, the build runs
``npm ci`` there first (a package install, at build time only). This hook then adds
its script, style sheet and fonts to the site under ``assets/katex/``; nothing is
fetched when a page is viewed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

VENDOR = Path(__file__).resolve().parents[1] / "vendor"
DIST = VENDOR / "node_modules" / "katex" / "dist"
SITE_DIR = "assets/katex"
#: What the pages load, relative to KaTeX's dist/ folder (fonts: every .woff2).
ASSETS = ("katex.min.css", "katex.min.js", "contrib/auto-render.min.js")


def install_katex() -> Path:
    """KaTeX's ``dist`` folder, installed with ``npm ci`` when it is missing.

    Raises:
        PluginError: when npm is not installed or the install fails.
    """
    if (DIST / "katex.min.js").is_file():
        return DIST
    npm = shutil.which("npm")
    if npm is None:
        raise PluginError("The documentation serves KaTeX from the npm package pinned in "
                          f"{VENDOR / 'package.json'}: install Node.js and npm (Debian: "
                          "apt-get install npm), or run `npm ci` in that folder.")
    result = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=VENDOR,
                            capture_output=True, text=True)
    if result.returncode != 0 or not (DIST / "katex.min.js").is_file():
        raise PluginError(f"`npm ci` in {VENDOR} failed:\n{result.stderr[-2000:]}")
    return DIST


def on_files(files: Files, config) -> Files:
    """Adds KaTeX's script, style sheet and fonts to the site."""
    dist = install_katex()
    paths = [dist / name for name in ASSETS] + sorted((dist / "fonts").glob("*.woff2"))
    for path in paths:
        uri = f"{SITE_DIR}/{path.relative_to(dist).as_posix().removeprefix('contrib/')}"
        files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files
