"""mkdocs hooks: the reference pages are made from the code at every build, never committed.

Why hooks and not a script whose output is committed: the command line, the spec settings and the
hyperparameters change in several branches at once (renames, new commands); pages made at build time
cannot go stale or conflict in a merge, and ``mkdocs build --strict`` in the tests builds them from the
code being tested. A page asks for a generated part with a marker line:

- ``<!-- generated: cli -->``: every command and flag of ``automl.cli.build_parser()``, with help and default;
- ``<!-- generated: settings -->`` and ``<!-- generated: hyperparameters -->``: the tables of ``automl.spec.SETTINGS``
  and ``automl.hparams.HYPERPARAMETERS`` (key, type, domain, default, flag, meaning);
- ``<!-- generated: run-folder -->``: the run folder's tree, from ``automl.layout`` (the one owner of its paths);
- ``<!-- generated: benchmark-results -->``: every ``results/benchmarks/*.md`` as the benchmarks wrote it;
- ``<!-- include: PATH -->``: a file of the repository (e.g. ``benchmarks/README.md``), its own title dropped and its
  headings one level down, so that the file stays the one owner of what it says.

The screenshots and benchmark figures under ``results/`` are served as ``img/...`` without copies in ``docs/``.
"""

from __future__ import annotations

import argparse
import inspect
import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"^<!-- (generated|include): (\S+) -->$", re.MULTILINE)
#: Images under results/ that pages show, and where the site serves them.
IMAGES = {"results/screenshots": "img/screenshots", "results/benchmarks": "img/benchmarks"}


def on_files(files, config):
    for source, target in IMAGES.items():
        for image in sorted((ROOT / source).glob("*.png")):
            files.append(File.generated(config, f"{target}/{image.name}", abs_src_path=str(image)))
    return files


def on_page_markdown(markdown, page, config, files):
    def replace(match: re.Match) -> str:
        kind, name = match.groups()
        if kind == "include":
            return include(ROOT / name)
        return GENERATORS[name]()

    return MARKER.sub(replace, markdown)


def include(path: Path, levels: int = 1) -> str:
    """A markdown file without its first title, its headings ``levels`` down (not the lines of code blocks)."""
    lines, fenced = [], False
    for line in re.sub(r"\A# .*\n", "", path.read_text()).splitlines():
        fenced ^= line.lstrip().startswith("```")
        lines.append("#" * levels + line if not fenced and re.match(r"#+ ", line) else line)
    return "\n".join(lines) + "\n"


def cell(text) -> str:
    """Text for a markdown table cell: pipes, emphasis marks and angle brackets taken literally."""
    text = str(text).replace("\n", " ")
    for char, escaped in (("\\", "\\\\"), ("|", "\\|"), ("*", "\\*"), ("_", "\\_"), ("<", "&lt;"), (">", "&gt;")):
        text = text.replace(char, escaped)
    return text


def code(text) -> str:
    return f"`{text}`"  # Python-Markdown tables do not split cells at pipes inside code spans


# --- the command line --------------------------------------------------------------------------------------------

def cli_reference() -> str:
    from automl.cli import build_parser

    parser = build_parser()
    out = ["Generated from `automl.cli.build_parser()`. `automl COMMAND --help` prints the same.\n",
           "```text", _usage(parser), "```\n"]
    top = [_argument_row(a) for a in parser._actions
           if not isinstance(a, argparse._HelpAction | argparse._SubParsersAction) and a.help != argparse.SUPPRESS]
    if top:
        out += ["| argument | meaning | default |", "| --- | --- | --- |", *top, ""]
    for name, sub, text in _commands(parser):
        out += _command(f"automl {name}", sub, text)
    return "\n".join(out)


def _usage(parser: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(parser.prog, width=100)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return formatter.format_help().strip()


def _commands(parser: argparse.ArgumentParser):
    """(name, parser, help) of each sub-command, in the order the parser lists them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, sub, helps.get(name, "")


def _command(title: str, parser: argparse.ArgumentParser, text: str) -> list[str]:
    out = [f"## {title}\n" if title.count(" ") == 1 else f"### {title}\n", cell(text) + "\n" if text else "",
           "```text", _usage(parser), "```\n"]
    rows, old = [], []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        if action.help == argparse.SUPPRESS:
            if hasattr(action, "new"):  # automl.cli._OldSpelling
                old.append(f"`{action.option_strings[0]}` (now `{action.new}`)")
            continue
        rows.append(_argument_row(action))
    if rows:
        out += ["| argument | meaning | default |", "| --- | --- | --- |", *rows, ""]
    if old:
        out.append(f"Old spellings still accepted for one release, with a note on stderr: {', '.join(old)}.\n")
    for name, sub, sub_text in _commands(parser):
        out += _command(f"{title} {name}", sub, sub_text)
    return out


def _argument_row(action: argparse.Action) -> str:
    if action.option_strings:
        name = action.option_strings[-1]
        if action.nargs != 0:
            metavar = action.metavar or ("{" + ",".join(map(str, action.choices)) + "}" if action.choices
                                         else action.dest.upper())
            name += f" {metavar}" + (" ..." if action.nargs in ("+", "*") else "")
        # Each spelling in a code span of its own (--tpe-constant-liar, --no-tpe-constant-liar).
        name = ", ".join([*map(code, action.option_strings[:-1]), code(name)])
    else:
        name = action.metavar or action.dest
        if action.choices:
            name += " {" + ",".join(map(str, action.choices)) + "}"
        name += " ..." if action.nargs in ("+", "*") else ""
    text = action.help or ""
    if action.required and action.option_strings:
        text = "required. " + text
    default = action.default
    setting = _settings_by_dest().get(action.dest)
    if setting is not None and default is None:
        # A flag that overrides a spec setting has no default of its own: the spec's value, else the setting's.
        shown = f"the spec's `{setting.key}`, else {_default(setting.default) or 'none'}"
    elif default in (None, False, argparse.SUPPRESS) or "default" in text or action.nargs == 0:
        shown = ""  # none, a switch, or the help already says it (defaults read from the environment among them)
    else:
        shown = code(default)
    return f"| {name if action.option_strings else code(name)} | {cell(text)} | {shown} |"


def _settings_by_dest() -> dict:
    from automl.spec import SETTINGS

    return {s.dest: s for s in SETTINGS.values() if s.flag}


# --- the spec ----------------------------------------------------------------------------------------------------

#: The domain of values that a ``parse`` function reads, as words (by the function's name).
PARSED_DOMAINS = {
    "parse_image_size": "S, HxW or [H, W]; 8 to 2048 px",
    "_fractions": "[train, val, test], positive, summing to 1",
    "_path": "a file path",
    "_file_or_none": "a file path, or none",
    "_names": "a run folder or name, or a list of them",
    "_weights": "imagenet, none, or the path of a .h5 file",
    "_trainable_layers": "0 to 100000, or all (= -1)",
}
PARSED_TYPES = {"parse_image_size": "size", "_fractions": "list", "_path": "path", "_file_or_none": "path",
                "_names": "list", "_weights": "str", "_trainable_layers": "int"}


def _domain(entry) -> str:
    if entry.parse is not None:
        return PARSED_DOMAINS[entry.parse.__name__]
    if entry.choices is not None:
        return ", ".join(map(str, entry.choices))
    if entry.type is bool:
        return "true, false"
    low, high = entry.low, entry.high
    if low is None and high is None:
        return "any"
    return f"{_number(low) if low is not None else '...'} to {_number(high) if high is not None else '...'}"


def _number(value) -> str:
    return f"{value:g}" if isinstance(value, float) else f"{value:,}"


def _type(entry) -> str:
    return PARSED_TYPES[entry.parse.__name__] if entry.parse is not None else entry.type.__name__


def _default(value) -> str:
    if value is None:
        return ""
    if value == "":
        return '`""`'
    if isinstance(value, tuple):
        return code(list(value)) if value else code("[]")
    return code(str(value).lower() if isinstance(value, bool) else value)


def settings_reference() -> str:
    from automl.spec import SETTINGS

    rows = ["| key | type | domain | default | flag | meaning |", "| --- | --- | --- | --- | --- | --- |"]
    for key, s in SETTINGS.items():
        rows.append(f"| {code(key)} | {_type(s)} | {cell(_domain(s))} | {_default(s.default)} | "
                    f"{code(s.flag) if s.flag else ''} | {cell(s.help)} |")
    return "\n".join(rows) + "\n"


def hyperparameters_reference() -> str:
    from automl.hparams import HYPERPARAMETERS, PER

    rows = ["| name | type | domain | default | per layer | meaning |", "| --- | --- | --- | --- | --- | --- |"]
    for name, hp in HYPERPARAMETERS.items():
        per = f"per {hp.per} ({PER[hp.per]})" if hp.per else ""
        rows.append(f"| {code(name)} | {_type(hp)} | {cell(_domain(hp))} | {_default(hp.default)} | {per} | "
                    f"{cell(hp.help)} |")
    return "\n".join(rows) + "\n"


# --- results -----------------------------------------------------------------------------------------------------

def run_folder() -> str:
    """The run folder's tree, as ``automl.layout`` (the owner of every path in it) describes it."""
    import automl.layout

    doc = inspect.getdoc(automl.layout)
    tree = doc.split("::", 1)[1].split("\n\n")[1]
    tree = re.sub(r":\w+:`([^`]+)`", r"\1", inspect.cleandoc(tree))  # Sphinx roles read as plain names here
    return "```text\nRESULTS/NAME/\n" + tree + "\n```\n"


def benchmark_results() -> str:
    out = []
    for path in sorted((ROOT / "results/benchmarks").glob("*.md")):
        out += [f"## `{path.name}`\n", include(path, levels=2), ""]
    return "\n".join(out)


GENERATORS = {"cli": cli_reference, "settings": settings_reference, "hyperparameters": hyperparameters_reference,
              "run-folder": run_folder, "benchmark-results": benchmark_results}
