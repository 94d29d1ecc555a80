// Typesets the math that pymdownx.arithmatex (generic mode) leaves in the pages, with the
// KaTeX copy the site serves itself (tutorials/hooks/katex.py): it works offline.
// document$ is Material for MkDocs' page observable: it also fires after instant navigation.
document$.subscribe(function ({ body }) {
  renderMathInElement(body, {
    delimiters: [
      { left: "\\(", right: "\\)", display: false },
      { left: "\\[", right: "\\]", display: true }
    ],
    throwOnError: false
  });
});
