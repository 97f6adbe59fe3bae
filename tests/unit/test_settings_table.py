"""docs/settings.md is generated from sandbox/settings.py: it lists every setting and is never stale."""

from sandbox.names import REPO_ROOT
from sandbox.settings import Settings
from sandbox.settings_table import render, sections

SOURCE = """
class Settings(BaseSettings):
    model_config = {}

    # Ports.
    a_port: int = 1
    b_port: int = 2  # the second
    # A comment of its own.
    c: str = "x"

    d: float = 0.5
"""


def test_fields_go_under_the_comment_block_nearest_above_them():
    found = [(s.comment, s.fields) for s in sections(SOURCE)]
    assert found == [
        ("Ports.", [("a_port", ""), ("b_port", "the second")]),
        ("A comment of its own.", [("c", "")]),
        ("", [("d", "")]),
    ]


def test_every_setting_is_in_the_table_once():
    table = render()
    for name in Settings.model_fields:
        assert table.count(f"| `SANDBOX_{name.upper()}` |") == 1, name


def test_docs_settings_md_is_current():
    written = (REPO_ROOT / "docs" / "settings.md").read_text()
    assert written == render(), "docs/settings.md is stale: run `make docs`"
