"""Every command, option, make target, setting, port, link and image the docs name exists.

The docs are read as a newcomer would copy from them: `sandbox <command> [--option]` and
`make <target>` inside code (spans and blocks), `SANDBOX_*` names anywhere, a service named next to
a port, and every relative link or image. A typo in any of them fails here (see the self-test).
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import click
import pytest
import typer.main

from sandbox.cli import app
from sandbox.names import REPO_ROOT
from sandbox.settings import Settings

DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").rglob("*.md"))]

# SANDBOX_* variables read outside Settings, on purpose (each where it is read).
NOT_SETTINGS = {
    "SANDBOX_IMAGE": "sandbox/names.py: the project image's name, read before any venv exists",
    "SANDBOX_BASE_IMAGE": "sandbox/kind_stack.py: the Dockerfile's BASE_IMAGE build argument",
    "SANDBOX_TEST_IMAGE": "tests/manifests/test_image.py: opt-in switch of `make test-image`",
}
# Ports of the cluster only (kind-config.yaml maps them to the host); the rest are Settings'.
CLUSTER_PORTS = {"grafana": 3001, "kfp ui": 8080}
SERVICES = ("mlflow", "serving", "monitor", "retrainer", "prometheus", "alertmanager")

CODE_BLOCK = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
CODE_SPAN = re.compile(r"`([^`\n]+)`")
# `sandbox train`, `.venv/bin/sandbox up`, `python -m sandbox.cli demo`; not sandbox/ or mlops-sandbox.
SANDBOX_CALL = re.compile(r"(?:(?<![\w/.-])|(?<=bin/))sandbox(?:\.cli)?[ \t]+(-v[ \t]+)?([a-z][a-z/-]*)(.*)")
END_OF_CALL = re.compile(r"&&|;|\s\|\s|\s#|\)\s|$")
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
MAKE_CALL = re.compile(r"(?<![\w-])make[ \t]+([a-z][\w-]*(?:[ \t]+[a-z][\w-]*)*)")
SETTING = re.compile(r"\bSANDBOX_[A-Z0-9_]*[A-Z0-9](_\*)?")
# A file of the repository named in code: `services/serving/feed.py`, `monitoring/prometheus/rules/`.
REPO_PATH = re.compile(
    r"^(?:sandbox|pipelines|services|monitoring|manifests|tests|benchmarks|docs)/[\w./-]*$"
)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)|<img\b[^>]*\bsrc=\"([^\"]+)\"")  # [](x), ![](x), <img src="x">
SERVICE_PORT = re.compile(
    # not a count: "the monitor 1500 rows", "serving 2000-row requests"
    r"\b(mlflow|serving|monitor|retrainer|prometheus|alertmanager|grafana|kfp ui)\b[ \t]*[:(]?[ \t]*:?(\d{4,5})\b"
    r"(?![,.]\d|[ \t-]*(?:rows?|records?|requests?)\b)",
    re.I,
)
CELL_PORT = re.compile(r"(?:^|:)(\d{4,5})\b")
LOOPBACK_PORT = re.compile(r"(?:127\.0\.0\.1|localhost):(\d{2,5})\b")


def command_options(typer_app: typer.Typer) -> dict[str, set[str]]:
    """Each command's option names (both sides of a --x/--y flag), from typer's click app."""

    def walk(cmd: click.Command, path: str) -> dict[str, set[str]]:
        found = {path: {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}}
        if hasattr(cmd, "list_commands"):  # a sub-app: `sandbox <group> <command>`
            ctx = click.Context(cmd)
            for name in cmd.list_commands(ctx):
                found |= walk(cmd.get_command(ctx, name), f"{path} {name}".strip())
        return found

    return walk(typer.main.get_command(typer_app), "")


@cache
def cli_options() -> dict[str, set[str]]:
    return command_options(app)


@cache
def make_targets() -> set[str]:
    text = (REPO_ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-zA-Z][\w-]*):", text, re.M))


@cache
def settings_env() -> set[str]:
    return {f"SANDBOX_{name.upper()}" for name in Settings.model_fields}


@cache
def known_ports() -> dict[str, int]:
    defaults = Settings.model_construct()
    return {**{s: getattr(defaults, f"{s}_port") for s in SERVICES}, **CLUSTER_PORTS}


def code_of(text: str) -> list[str]:
    """The lines of every code block and every code span, where commands are written."""
    blocks = CODE_BLOCK.findall(text)
    prose = CODE_BLOCK.sub("", text)
    return [line for block in blocks for line in block.splitlines()] + CODE_SPAN.findall(prose)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    heading = re.sub(r"[`*_\[\]()]|\]\([^)]*\)", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", heading).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Its headings' anchors; a repeated heading gets -1, -2, ... as on GitHub."""
    text = CODE_BLOCK.sub("", path.read_text())
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#+\s+(.*)$", text, re.M):
        base = slug(heading)
        seen[f"{base}-{seen[base]}" if base in seen else base] = 0
        seen[base] = seen.get(base, 0) + 1
    return set(seen)


def table_ports(text: str) -> list[tuple[str, str]]:
    """(service, port) from tables: a service's column (| MLflow | ... over | 5000 |) or row (| MLflow | :5000 |)."""
    found = []
    for table in re.findall(r"(?:^\|.*\|[ \t]*\n)+", text, re.M):
        rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table.splitlines()]
        header, body = rows[0], [r for r in rows[2:] if len(r) == len(rows[0])]
        for row in body:
            for name, cell in zip(header, row, strict=True):
                found += [(name, p) for p in CELL_PORT.findall(cell) if name.lower() in known_ports()]
            first = re.match(r"[\w ]+", row[0])
            if first and first.group(0).strip().lower() in known_ports():
                found += [(first.group(0).strip(), p) for cell in row[1:] for p in CELL_PORT.findall(cell)]
    return found


def problems(text: str, where: Path, root: Path = REPO_ROOT, options: dict | None = None) -> list[str]:
    """What in ``text`` (a doc at ``where`` in the tree ``root``) names something that does not exist."""
    found = []
    options = options or cli_options()
    for code in code_of(text):
        for call in SANDBOX_CALL.finditer(code):
            words, rest = call.group(2), call.group(3)
            rest = rest[: END_OF_CALL.search(rest).start()]
            commands = [w for w in words.split("/") if w]
            groups = {name.rsplit(" ", 1)[0] for name in options if " " in name}
            while len(commands) == 1 and commands[0] in groups:  # `sandbox <group> <command>`
                sub = re.match(r"[ \t]+([a-z][a-z-]*)", rest)
                if not sub:
                    break
                commands, rest = [f"{commands[0]} {sub.group(1)}"], rest[sub.end() :]
            for command in commands:
                if command not in options:
                    found.append(f"`sandbox {command}`: no such command")
            for option in OPTION.findall(rest):
                if not any(option in options.get(c, set()) for c in commands):
                    found.append(f"`sandbox {'/'.join(commands)} {option}`: no such option")
        for word in code.split():
            path = word.strip("`'\",;:()").split(":")[0]
            if REPO_PATH.match(path) and not (root / path).exists():
                found.append(f"{path}: no such file in the repository")
        for call in MAKE_CALL.finditer(code):
            target = call.group(1).split()[0]
            if target not in make_targets():
                found.append(f"`make {target}`: no such target in the Makefile")
    known = settings_env() | set(NOT_SETTINGS)
    for match in SETTING.finditer(text):
        name, prefix = match.group(0).rstrip("*"), bool(match.group(1))
        if prefix and not any(k.startswith(name) for k in known):
            found.append(f"{name}*: no setting starts so")
        elif not prefix and name not in known:
            found.append(f"{name}: not a Settings field (nor a listed non-Settings variable)")
    ports = known_ports()
    for service, port in SERVICE_PORT.findall(text) + table_ports(text):
        if int(port) != ports[service.lower()]:
            found.append(f"{service} {port}: its default port is {ports[service.lower()]}")
    for port in LOOPBACK_PORT.findall(text):
        if int(port) not in ports.values():
            found.append(f"127.0.0.1:{port}: no service has this default port")
    for target in (a or b for a, b in LINK.findall(CODE_BLOCK.sub("", text))):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        path = (where.parent / file).resolve() if file else where
        if not path.is_relative_to(root):  # a clone has only the repository
            found.append(f"link {target}: outside the repository")
        elif not path.exists():
            found.append(f"link {target}: {file} does not exist")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            found.append(f"link {target}: no heading #{anchor} in {path.name}")
    return found


def test_each_listed_non_settings_variable_is_read_where_it_says():
    for name, where in NOT_SETTINGS.items():
        assert name in (REPO_ROOT / where.split(":")[0]).read_text(), f"{name} is not read in {where}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_everything_a_doc_names_exists(doc):
    assert problems(doc.read_text(), doc) == []


BAD = """
| MLflow | serving |
|---|---|
| 5000 | 3030 |

| UI | URL |
|---|---|
| Prometheus | http://127.0.0.1:9091 |
Read `services/serving/nope.py`. Start with `sandbox up --lokal`, then `sandbox trian`, and `make tset`.
Set SANDBOX_MONITR_PORT or any SANDBOX_DATA_QUALTY_* threshold; the monitor listens on :8011
(monitor 8011, http://127.0.0.1:8011). See [the runbook](runbooks/Nope.md) and ![a picture](images/none.png)
and [a section](#no-such-heading) and [the design](../../shared/DESIGN.md) and <img src="images/gone.png" width="50%">.

```bash
.venv/bin/sandbox incident covariate_shift --sevrity 2   # a comment --ignored
```
"""


def test_a_typo_of_each_kind_is_found(tmp_path):
    doc = tmp_path / "bad.md"
    doc.write_text(BAD)
    found = "\n".join(problems(BAD, doc, root=tmp_path))
    for expected in (
        "`sandbox up --lokal`",
        "`sandbox trian`",
        "services/serving/nope.py: no such file",
        "`make tset`",
        "SANDBOX_MONITR_PORT",
        "SANDBOX_DATA_QUALTY_*",
        "monitor 8011",
        "serving 3030",
        "Prometheus 9091",
        "127.0.0.1:8011",
        "runbooks/Nope.md",
        "images/none.png",
        "images/gone.png",
        "#no-such-heading",
        "DESIGN.md: outside the repository",
        "`sandbox incident --sevrity`",
    ):
        assert expected in found, f"{expected} not reported in:\n{found}"
    assert "--ignored" not in found


def test_a_command_of_a_sub_app_is_checked_with_its_own_options(tmp_path):
    release, fake = typer.Typer(), typer.Typer()

    @release.command("status")
    def status(as_json: bool = typer.Option(False, "--json")) -> None: ...

    @release.command("promote")
    def promote() -> None: ...

    fake.add_typer(release, name="release")
    text = "`sandbox release status --json`, `sandbox release status --jsn`, `sandbox release stauts`"
    assert problems(text, tmp_path / "doc.md", root=tmp_path, options=command_options(fake)) == [
        "`sandbox release status --jsn`: no such option",
        "`sandbox release stauts`: no such command",
    ]


def test_good_text_passes(tmp_path):
    good = (
        "`sandbox train --source csv --csv-path F`, `sandbox up --kind`, `sandbox up/status/down`, "
        "`make demo`, SANDBOX_MONITOR_PORT, SANDBOX_DATA_QUALITY_* and SANDBOX_IMAGE; "
        "monitor 8001, http://127.0.0.1:8001, [settings](settings.md), [here](#a-heading-here); "
        "the monitor 1500 rows, serving 2000-row requests.\n"
        "## A heading, here\n"
    )
    (tmp_path / "settings.md").write_text("# Settings\n")
    (tmp_path / "doc.md").write_text(good)
    assert problems(good, tmp_path / "doc.md", root=tmp_path) == []


def test_every_help_lists_its_choices():
    from pipelines.scenarios import SCENARIOS
    from sandbox.demo import DEMO_ROWS_PER_REQUEST, STORIES
    from sandbox.traffic import TRAFFIC_SCENARIOS
    from sandbox.training import SOURCE_CHOICES

    group = typer.main.get_command(app)
    ctx = click.Context(group)

    def help_of(command: str, param: str) -> str:
        cmd = group.get_command(ctx, command)
        return next(p.help for p in cmd.params if p.name == param)

    expected = {
        ("train", "source"): SOURCE_CHOICES,
        ("train", "scenario"): SCENARIOS,
        ("traffic", "scenario"): TRAFFIC_SCENARIOS,
        ("incident", "scenario"): [s for s in TRAFFIC_SCENARIOS if s != "none"],
        ("demo", "story"): STORIES,
        ("demo", "scenario"): [
            s for s in SCENARIOS if s not in ("none", "unit_change", "label_bug", "launch_label_bug")
        ],
    }
    for (command, param), choices in expected.items():
        text = help_of(command, param)
        missing = [c for c in choices if not re.search(rf"(?<![\w-]){c}(?![\w-])", text)]
        assert not missing, f"`sandbox {command} --help` does not list {missing} for {param}"
    # The demo's default lives in sandbox.demo (the CLI does not import it at start-up): the help says it.
    assert f"the demo's, {DEMO_ROWS_PER_REQUEST})" in help_of("demo", "rows_per_request")


def test_every_picture_is_shown_and_made_by_make_screenshots():
    """docs/images/ holds only pictures a doc shows and `make screenshots` remakes (docs/screenshots.py)."""
    pictures = {p.name for p in (REPO_ROOT / "docs" / "images").glob("*.png")}
    shown = "".join(doc.read_text() for doc in DOCS)
    script = (REPO_ROOT / "docs" / "screenshots.py").read_text()
    assert pictures, "no pictures: run `make screenshots`"
    for name in sorted(pictures):
        assert f"images/{name}" in shown, f"docs/images/{name} is shown by no doc"
        assert f'"{name.removesuffix(".png")}"' in script, (
            f"docs/images/{name} is not made by docs/screenshots.py"
        )
