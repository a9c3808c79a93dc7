"""The manual cannot drift: docs/cli.md is what the argparse tree writes, every Markdown link and
anchor resolves, and every reference to a document in the code points at a file of this repository."""

import re
from pathlib import Path

import pytest

from scdpo.cli import LEGACY_NAMES, build_parser, main, translate_legacy
from scdpo.clidoc import _walk, render

REPO = Path(__file__).resolve().parents[2]
MANUAL = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
CODE_DIRS = ("trainer", "comfy_nodes", "a1111_extension", "scripts")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
DOC_REF = re.compile(r"\b((?:docs/)?[A-Za-z_]+\.md)(#[\w\-§.]+)?")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    in_code = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not line.startswith("#"):
            continue
        slug = _slug(line.lstrip("#"))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _links(path: Path):
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    for match in LINK.finditer(text):
        yield match.group(1) or match.group(2)


def test_the_command_reference_is_generated_from_the_parser():
    assert (REPO / "docs" / "cli.md").read_text(encoding="utf-8") == render(), \
        "docs/cli.md is stale: run `scdpo dev cli-docs --out docs/cli.md`"


@pytest.mark.parametrize("doc", MANUAL, ids=lambda p: p.name)
def test_every_link_and_anchor_in_the_manual_resolves(doc):
    broken = []
    for target in _links(doc):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:: not checked offline
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(target)
    assert not broken, f"{doc.name}: broken links {broken}"


def _code_files():
    for folder in CODE_DIRS:
        yield from (p for p in (REPO / folder).rglob("*.py") if ".venv" not in p.parts)


def test_code_and_help_cite_documents_that_exist():
    missing = []
    for path in _code_files():
        text = path.read_text(encoding="utf-8")
        assert "DESIGN.md" not in text, f"{path.relative_to(REPO)} cites DESIGN.md, which users never see"
        for name, anchor in DOC_REF.findall(text):
            if not name.startswith("docs/"):
                continue
            dest = REPO / name
            if not dest.exists() or (anchor and anchor[1:] not in _anchors(dest)):
                missing.append(f"{path.relative_to(REPO)}: {name}{anchor}")
    assert not missing, missing
    help_text = build_parser().format_help()
    assert "DESIGN.md" not in help_text and "docs/cli.md" in help_text


def test_readme_is_a_manual_not_a_lab_book():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 300
    comfy = next(i for i, line in enumerate(lines) if line.startswith("#") and "ComfyUI" in line)
    a1111 = next(i for i, line in enumerate(lines) if line.startswith("#") and "AUTOMATIC1111" in line)
    assert comfy < 120 and a1111 < 120


def test_old_flat_command_names_still_run_for_one_release(capsys):
    assert translate_legacy(["-v", "build-dataset", "--out", "x"]) == ["-v", "data", "build", "--out", "x"]
    assert translate_legacy(["lora", "train"]) == ["lora", "train"]  # new names untouched
    assert "now `scdpo data build`" in capsys.readouterr().err
    commands = {words for words, _, _ in _walk(build_parser(), ())}
    assert all(new in commands for new in LEGACY_NAMES.values())
    assert main(["validate-dataset", str(REPO / "no-such-dataset")]) == 2
