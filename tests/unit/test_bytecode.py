"""The venv holds compiled bytecode for its heavy packages (`make setup` compiles at install).

With PYTHONDONTWRITEBYTECODE=1 (set on this machine, many CI images and every read-only container)
a package installed without its .pyc is compiled from source by every process that imports it:
`import sklearn.ensemble` 5.7 s instead of 1.9 s here.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

HEAVY_PACKAGES = ("sklearn", "mlflow", "kfp", "pandas", "bentoml", "evidently")


def compiled_share(package_dir: Path) -> tuple[float, list[Path]]:
    """The share of the package's modules that have a .pyc for this interpreter, and some that lack one."""
    sources = [p for p in package_dir.rglob("*.py") if "tests" not in p.parts]
    missing = [p for p in sources if not Path(importlib.util.cache_from_source(str(p))).exists()]
    return 1 - len(missing) / len(sources), missing[:3]


@pytest.mark.parametrize("package", HEAVY_PACKAGES)
def test_heavy_package_has_bytecode(package):
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.origin, f"{package} is not installed"
    share, examples = compiled_share(Path(spec.origin).parent)
    # A few files may not compile (templates, py2 leftovers in vendored code): nearly all must.
    assert share >= 0.95, (
        f"{package}: only {share:.0%} of its modules are compiled (e.g. {examples}); "
        "reinstall with `rm -rf .venv && make setup` (uv pip install --compile-bytecode)"
    )


def test_compiled_share_sees_a_missing_pyc(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "b.py").write_text("y = 2\n")
    import py_compile

    py_compile.compile(str(tmp_path / "a.py"))
    share, missing = compiled_share(tmp_path)
    assert share == 0.5 and missing == [tmp_path / "b.py"]
