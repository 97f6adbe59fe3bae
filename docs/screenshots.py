"""The docs' pictures, from a real demo run: `make screenshots` writes docs/images/*.png.

A stack of its own (a temp state dir, a free 127.0.0.1 port for every service, the demo profile)
runs the demo's own steps (sandbox/demo.py); headless Chromium photographs each page at the moment
the walkthrough (docs/walkthrough.md) talks about it:

- after the incident's alert fires: the status page (`status-incident.png`) and Prometheus'
  alerts (`prometheus-alerts.png`);
- after the bake: the status page (`status-recovered.png`), MLflow's registered model with its
  aliases (`mlflow-model.png`) and the demo report (`demo-report.png`).

    .venv/bin/python docs/screenshots.py [--out docs/images]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # sandbox, tests.support

from tests.support.browser import CHROMIUM, capture  # noqa: E402
from tests.support.processes import free_port  # noqa: E402

SERVICES = ("mlflow", "serving", "monitor", "retrainer", "prometheus", "alertmanager")
console = Console(stderr=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "images", help="where the PNGs go"
    )
    args = parser.parse_args()
    if CHROMIUM is None:
        sys.exit(
            "chromium is not installed: run `make setup` (Debian: apt-get install chromium fonts-dejavu-core)"
        )
    home = Path(tempfile.mkdtemp(prefix="screenshots-"))
    os.environ["SANDBOX_HOME"] = str(home)  # the services read their settings from this environment
    os.environ.update({f"SANDBOX_{name.upper()}_PORT": str(free_port()) for name in SERVICES})

    from sandbox import local_stack
    from sandbox.demo import Demo, DemoError, Timeline, demo_settings, write_report
    from sandbox.settings import Settings

    settings = demo_settings(Settings())
    timeline = Timeline(on_event=lambda e: console.log(f"{e['t']:6.1f}s  {e['event']}  {e['detail']}"))
    demo = Demo(settings, timeline, on_status=console.log)
    args.out.mkdir(parents=True, exist_ok=True)

    def shoot(name: str, url: str, size: tuple[int, int] = (1280, 1400)) -> None:
        # SPAs (MLflow, Prometheus) render after their scripts fetch: give them virtual time.
        capture(url, args.out / f"{name}.png", home / "chromium", size, ("--virtual-time-budget=15000",))
        console.log(f"[green]{args.out / name}.png[/] <- {url}")

    after = {
        "incident": lambda: (
            shoot("status-incident", f"{settings.monitor_url}/"),
            shoot("prometheus-alerts", f"{settings.prometheus_url}/alerts", (1280, 900)),
        ),
        "bake": lambda: (
            shoot("status-recovered", f"{settings.monitor_url}/"),
            shoot("mlflow-model", f"{settings.mlflow_uri}/#/models/{settings.model_name}", (1280, 900)),
        ),
    }
    try:
        for step in demo.steps():
            step()
            after.get(step.__name__, lambda: None)()
        demo.stop_traffic()
        report = write_report(settings, timeline, demo.result)
        shoot("demo-report", report.as_uri(), (1280, 2200))
    except DemoError as exc:
        sys.exit(f"the demo failed, no pictures taken from it: {exc}")
    finally:
        demo.stop_traffic()
        local_stack.down(settings)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
