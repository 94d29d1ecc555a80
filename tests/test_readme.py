"""The README for someone deciding in a minute: install first, where the data comes from
before the quick start, which recipe to pick, the generated blocks still marked."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _sections() -> list[str]:
    return re.findall(r"^## (.+)$", README, flags=re.MULTILINE)


def test_install_comes_first_with_the_clone_and_the_git_form():
    assert _sections()[:3] == ["Install", "First run", "Quick start"]
    install = README.split("## Install", 1)[1].split("\n## ", 1)[0]
    first_block = re.search(r"```bash\n(.*?)```", install, flags=re.DOTALL).group(1)
    assert first_block.splitlines()[0].startswith("pip install .")
    assert 'pip install ".[notebooks]"' in first_block and "jupyter lab notebooks/" in first_block
    repo = re.search(r"^repo_url:\s*(\S+)", (ROOT / "mkdocs.yml").read_text(),
                     flags=re.MULTILINE).group(1).rstrip("/")
    assert f'pip install "keras-advcal @ git+{repo}.git"' in install


def test_the_data_source_is_said_before_the_quick_start_which_downloads_on_first_use():
    before, quick_start = README.split("## Quick start", 1)
    assert "Where the data comes from" in before and "--download" in before
    code = re.search(r"```python\n(.*?)```", quick_start, flags=re.DOTALL).group(1)
    assert "download=True" in code


def test_recipes_before_the_evidence_and_every_generated_block_marked():
    sections = _sections()
    assert sections.index("Which recipe to pick") < sections.index("Does it work?")
    for name in ("heldout-headline", "heldout-evidence", "evidence-coverage"):
        start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
        assert README.count(start) == README.count(end) == 1, name
        assert README.index(start) < README.index(end)
    assert README.index("## Which recipe to pick") < README.index("<!-- heldout-evidence:start")
    recipes = README.split("## Which recipe to pick", 1)[1].split("\n## ", 1)[0]
    for flag in ("--labels hard", "--objective trades"):
        assert flag in recipes
    # Numbers only in the block a script writes (benchmarks/recipes.py).
    start, end = "<!-- recipe-study:start -->", "<!-- recipe-study:end -->"
    assert recipes.count(start) == recipes.count(end) == 1
    written_by_hand = recipes.split(start)[0] + recipes.split(end)[1]
    assert not re.search(r"\d+\.\d+ ?(%|points)", written_by_hand)


def test_the_opening_lines_say_what_the_evidence_covers():
    """Before Install: the generated block naming every dataset and model measured."""
    opening = README.split("## Install", 1)[0]
    block = opening.split("<!-- evidence-coverage:start -->", 1)[1].split(
        "<!-- evidence-coverage:end -->", 1)[0]
    for name in ("Fashion-MNIST", "MNIST", "PreActResNet-18", "SGD"):
        assert name in block, name
