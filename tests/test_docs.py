"""The documentation site builds with ``mkdocs build --strict`` (a broken link or a missing page fails), its generated
reference pages hold every command, flag, setting and hyperparameter, and the README stays a short front page."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from automl.cli import build_parser
from automl.hparams import HYPERPARAMETERS
from automl.spec import SETTINGS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                          capture_output=True, text=True, env=os.environ | {"NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def _text(html: Path) -> str:
    return html.read_text()


def _flags(parser) -> set[str]:
    flags = set()
    for action in parser._actions:
        if action.help != "==SUPPRESS==":
            flags.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                flags |= _flags(sub)
    return flags


def test_cli_reference_lists_every_command_and_flag(site):
    page = _text(site / "reference/cli/index.html")
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    for command in commands:
        assert f'<h2 id="automl-{command}">automl {command}<' in page, command
    missing = sorted(f for f in _flags(build_parser()) - {"-h", "--help"} if f"<code>{f}" not in page)
    assert not missing, missing


def test_spec_reference_lists_every_setting_and_hyperparameter(site):
    page = _text(site / "reference/spec/index.html")
    missing = [k for k in [*SETTINGS, *HYPERPARAMETERS] if f"<code>{k}</code>" not in page]
    assert not missing, missing
    assert "<code>NAME: {fixed: VALUE}</code>" in page  # the grammar, fixed: included


def test_no_marker_is_left_unexpanded(site):
    marker = re.compile(r"(&lt;|<)!-- (generated|include):")
    left = [str(p.relative_to(site)) for p in site.rglob("*.html") if marker.search(p.read_text())]
    assert not left, left


def test_readme_is_short_and_keeps_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) < 10_000, len(readme.encode())
    ci = (ROOT / ".ci/run").read_text()
    for name in ("INSTALL", "TEST"):  # .ci/run greps the README for these exact commands
        command = re.search(rf"^{name}='(.*)'$", ci, re.MULTILINE)[1]
        assert command in readme, command
    for link in re.findall(r"\]\((?!https?://)([^)#]+)", readme):  # relative links point at files that exist
        assert (ROOT / link).exists(), link


def test_the_api_page_shows_the_example_ci_runs():
    from tests.test_api import docstring_example

    page = (ROOT / "docs" / "guide" / "api.md").read_text()
    assert f"```python\n{docstring_example()}```" in page
