"""The README is a short front door whose links, pages and commands all work."""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
MAX_README_LINES = 250
# Subcommands whose README commands need no dataset, weights or long run: they run as written.
RUN_AS_WRITTEN = {"cost"}

_FENCE = re.compile(r"^\s*(```|~~~)")
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _split_code(text: str) -> tuple[list[str], list[list[str]]]:
  """(prose lines, code blocks as lists of lines) of a markdown text."""
  prose, blocks, block = [], [], None
  for line in text.splitlines():
    if _FENCE.match(line):
      if block is None:
        block = []
      else:
        blocks.append(block)
        block = None
    elif block is None:
      prose.append(line)
    else:
      block.append(line)
  return prose, blocks


def _anchors(path: pathlib.Path) -> set[str]:
  """GitHub's anchors of a markdown file's headings (duplicates get -1, -2, ...)."""
  seen: dict[str, int] = {}
  for line in _split_code(path.read_text())[0]:
    m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
    if not m:
      continue
    slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
    n = seen.get(slug, 0)
    seen[slug] = n + 1
    if n:
      seen[f"{slug}-{n}"] = 1
  return set(seen)


def _links(path: pathlib.Path) -> list[str]:
  prose = "\n".join(_split_code(path.read_text())[0])
  return _LINK.findall(prose)


def _pages() -> list[pathlib.Path]:
  return [README, *DOCS]


def test_readme_is_short():
  lines = README.read_text().splitlines()
  assert len(lines) <= MAX_README_LINES, (
      f"README.md has {len(lines)} lines (at most {MAX_README_LINES}); move detail to docs/")


@pytest.mark.parametrize("page", _pages(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_point_at_existing_files_and_headings(page):
  bad = []
  for target in _links(page):
    if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
      continue
    file_part, _, anchor = target.partition("#")
    dest = (page.parent / file_part).resolve() if file_part else page
    if not dest.exists():
      bad.append(f"{target}: {dest.relative_to(REPO) if dest.is_relative_to(REPO) else dest} "
                 "does not exist")
    elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
      bad.append(f"{target}: no heading with anchor #{anchor} in {dest.name}")
  assert not bad, f"{page.relative_to(REPO)}:\n  " + "\n  ".join(bad)


def test_every_docs_page_is_linked_from_the_readme():
  linked = {(README.parent / t.partition("#")[0]).resolve() for t in _links(README)}
  missing = [p.relative_to(REPO).as_posix() for p in DOCS if p.resolve() not in linked]
  assert not missing, f"docs pages the README does not link: {missing}"


def _readme_commands() -> list[str]:
  """Every `sesam ...` command in the README's code blocks, continuation lines joined."""
  commands = []
  for block in _split_code(README.read_text())[1]:
    text = re.sub(r"\\\n\s*", " ", "\n".join(block))
    for line in text.splitlines():
      line = line.split("  #", 1)[0].strip()
      for m in re.finditer(r"(?:^|&&\s*|\$\s+)(sesam(?:\s+[^&|;]*)?)", line):
        commands.append(m.group(1).strip())
  return commands


def _run_sesam(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
  return subprocess.run([sys.executable, "-m", "sesam_jax.main", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_the_readme_shows_commands():
  subcommands = {c.split()[1] for c in _readme_commands() if len(c.split()) > 1}
  assert {"demo", "train", "eval", "refine", "predict", "reproduce", "report",
          "convert", "cost"} <= subcommands, subcommands


def test_readme_commands_run_or_their_subcommand_exists():
  """Data-free commands run as written; the others' subcommands answer --help."""
  commands = _readme_commands()
  assert commands
  helped = set()
  for command in commands:
    words = command.split()
    assert len(words) > 1, f"bare `sesam` in the README: {command!r}"
    sub = words[1]
    if sub in RUN_AS_WRITTEN:
      done = _run_sesam(words[1:])
      assert done.returncode == 0, f"`{command}` failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
      json.loads(done.stdout.strip().splitlines()[-1])  # the result line is JSON
    elif sub not in helped:
      done = _run_sesam([sub, "--help"])
      assert done.returncode == 0, (f"`sesam {sub} --help` (from the README's `{command}`) "
                                    f"failed:\n{done.stderr[-2000:]}")
      helped.add(sub)
