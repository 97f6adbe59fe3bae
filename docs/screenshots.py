"""The docs' pictures, from a real demo run: `make screenshots` writes docs/images/*.png.

A stack of its own (a temp state dir, a free 127.0.0.1 port for every service, the demo profile)
runs the demo itself (`Demo.run`, sandbox/demo.py); after the steps the walkthrough
(docs/walkthrough.md) talks about, headless Chromium photographs the pages:

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
from tests.support.processes import free_port, wait_until  # noqa: E402

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
    from sandbox.demo import ALERT, Demo, Timeline, demo_settings
    from sandbox.settings import Settings
    from sandbox.status import monitor_status, prometheus_alerts_page

    settings = demo_settings(Settings())
    timeline = Timeline(on_event=lambda e: console.log(f"{e['t']:6.1f}s  {e['event']}  {e['detail']}"))
    demo = Demo(settings, timeline, on_status=console.log)
    args.out.mkdir(parents=True, exist_ok=True)

    failed: list[str] = []

    def shoot(name: str, url: str, size: tuple[int, int] = (1280, 1400), spa: bool = False) -> None:
        # Pages drawn by scripts (MLflow, Prometheus, the report's plots) get virtual time to run them;
        # not the status page: it refreshes itself, and virtual time would reload it over and over.
        flags = ("--virtual-time-budget=8000",) if spa else ()
        try:
            capture(url, args.out / f"{name}.png", home / "chromium", size, flags, timeout=90)
            console.log(f"[green]{args.out / name}.png[/] <- {url}")
        except RuntimeError as exc:  # one picture missing is no reason to stop the story
            failed.append(name)
            console.log(f"[red]{name}: {exc}")

    def alert_on_status_page() -> None:
        # The page shows Alertmanager's alerts as of its last evaluation: wait for the firing one.
        wait_until(
            lambda: any(a.get("name") == ALERT for a in (monitor_status(settings) or {}).get("alerts") or []),
            30,
        )

    after = {
        "incident": lambda: (
            shoot("prometheus-alerts", prometheus_alerts_page(settings), (1280, 900), spa=True),
            alert_on_status_page(),
            shoot("status-incident", f"{settings.monitor_url}/"),
        ),
        "bake": lambda: (
            shoot("status-recovered", f"{settings.monitor_url}/"),
            shoot(
                "mlflow-model", f"{settings.mlflow_uri}/#/models/{settings.model_name}", (1600, 900), spa=True
            ),
        ),
    }
    try:
        result = demo.run(after_step=lambda name: after.get(name, lambda: None)())
        if result.report:
            shoot("demo-report", Path(result.report).as_uri(), (1280, 2600), spa=True)
    finally:
        local_stack.down(settings)
        shutil.rmtree(home, ignore_errors=True)
    if not result.completed:
        sys.exit(f"the demo failed, so its later pictures were not taken: {result.error}")
    if failed:
        sys.exit(f"not photographed: {', '.join(failed)} (see above); the others are in {args.out}")


if __name__ == "__main__":
    main()
