"""docs/settings.md from the code: every ``Settings`` field with its variable, type, default and comment.

The comments above the fields in sandbox/settings.py are the documentation (one place); this
groups the fields under the comment block nearest above them. ``make docs`` writes the file and
tests/unit/test_settings_table.py fails when it is stale.

    python -m sandbox.settings_table > docs/settings.md
"""

from __future__ import annotations

import ast
import inspect
import io
import json
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

from sandbox import settings as settings_module
from sandbox.settings import Settings

HEADER = """# Settings

Every setting is an environment variable (`SANDBOX_` + the name in capitals) read by one
`pydantic-settings` class, `sandbox/settings.py`, by the CLI and by every service (supervisord passes
the embedded stack's on; in the cluster they come from ConfigMaps). Dictionaries are JSON, e.g.
`SANDBOX_MONITOR_DRIFT_THRESHOLDS='{"wasserstein": 0.2}'`. `sandbox demo` uses shorter intervals of
its own (`DEMO_OVERRIDES` in sandbox/demo.py).

Generated from the code by `make docs` (`python -m sandbox.settings_table`); do not edit by hand.
"""


@dataclass
class Section:
    comment: str
    fields: list[tuple[str, str]] = field(default_factory=list)  # (name, inline comment)


def comments_by_line(source: str) -> dict[int, str]:
    return {
        tok.start[0]: tok.string.lstrip("#").strip()
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.COMMENT
    }


def sections(source: str) -> list[Section]:
    """Fields in source order, under the comment block nearest above them (a blank line ends a section)."""
    lines = source.splitlines()
    comments = comments_by_line(source)
    cls = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == "Settings")
    out: list[Section] = []
    previous_end = None
    for node in cls.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above, line = [], node.lineno - 1
        while line >= 1 and lines[line - 1].strip().startswith("#"):
            above.insert(0, comments[line])
            line -= 1
        blank_before = line >= 1 and not lines[line - 1].strip()
        if above or not out or blank_before or previous_end is None:
            out.append(Section(" ".join(above)))
        inline = comments.get(node.end_lineno, "")
        out[-1].fields.append((node.target.id, inline))
        previous_end = node.end_lineno
    return out


def default_text(name: str) -> str:
    info = Settings.model_fields[name]
    default = info.default
    if isinstance(default, Path):
        try:
            default = f"<repo>/{default.relative_to(settings_module.REPO_ROOT)}"
        except ValueError:
            default = str(default)
        return f"`{default}`"
    if isinstance(default, dict):
        return f"`{json.dumps(default)}`"
    if default is None:
        return "unset"
    return f"`{default!r}`" if isinstance(default, str) else f"`{default}`"


def type_text(name: str) -> str:
    annotation = Settings.model_fields[name].annotation
    text = getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
    return text.replace(" | ", " or ")  # a bar would end the table cell


def render() -> str:
    out = [HEADER]
    for section in sections(inspect.getsource(settings_module)):
        out.append("")
        if section.comment:
            out += [section.comment, ""]
        out += ["| variable | type | default | note |", "|---|---|---|---|"]
        for name, inline in section.fields:
            note = inline or (Settings.model_fields[name].description or "")
            out.append(f"| `SANDBOX_{name.upper()}` | {type_text(name)} | {default_text(name)} | {note} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(render(), end="")
