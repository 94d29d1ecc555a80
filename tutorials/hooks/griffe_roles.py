"""Griffe extension: shows Sphinx cross-reference roles of the docstrings as code.

The package's docstrings are Google style with a few Sphinx roles
(``:class:`~keras_advcal.AdvCalTrainer```, ``:func:`load```). mkdocstrings renders
docstrings as Markdown, where the roles would show up verbatim; this extension
rewrites them to inline code before rendering: ``~a.b.C`` shows ``C``, ``a.b.C``
shows ``a.b.C``. Loaded by ``mkdocs.yml`` (``plugins.mkdocstrings...extensions``).

Example:

    >>> sphinx_roles_to_code("See :class:`~keras_advcal.AdvCalTrainer` and :func:`load`.")
    'See `AdvCalTrainer` and `load`.'
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|obj|exc|const):`(~?)([^`]+)`")


def _replace(match: re.Match) -> str:
    short, target = match.group(1), match.group(2).strip()
    # ":class:`text <target>`" shows the text.
    explicit = re.fullmatch(r"(.+?)\s*<[^>]+>", target)
    if explicit:
        return f"`{explicit.group(1)}`"
    if short:
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


def sphinx_roles_to_code(text: str) -> str:
    """Rewrites every Sphinx role of ``text`` to Markdown inline code."""
    return _ROLE.sub(_replace, text)


class SphinxRolesToCode(griffe.Extension):
    """Rewrites Sphinx roles in every docstring that griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None and ":" in obj.docstring.value:
            obj.docstring.value = sphinx_roles_to_code(obj.docstring.value)
