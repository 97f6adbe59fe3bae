"""Replay generated loan applications to serving at a set rate, with delayed ground truth to the monitor.

The rows come from the same generator and drift scenarios as training data, so an incident is a
scenario switched on in live traffic. Bounded in rate and time, and loopback only.

One incident exists only here: ``invalid_rows`` sends ``0.3 x severity`` of the rows (at most all)
broken the way a buggy client breaks them, out of the schema's range or of the wrong type
(``INVALID_VALUES``, in turn). Serving refuses them (400), so they are sent raw, never as a frame.
"""

from __future__ import annotations

import ipaddress
import json
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import httpx

from pipelines.data import DataError, default_rule, generate_loans
from pipelines.features import LABEL, LOAN_SCHEMA
from pipelines.scenarios import SCENARIOS, apply_scenario, check_scenario
from sandbox.settings import Settings

MAX_RPS, MAX_DURATION_S = 500.0, 3600.0
INVALID_ROWS = "invalid_rows"
TRAFFIC_SCENARIOS = (*SCENARIOS, INVALID_ROWS)
INVALID_SHARE_PER_SEVERITY = 0.3
# What a broken client sends, one per broken row in turn: (feature, value, what serving says it is).
INVALID_VALUES = (
    ("credit_score", 900, "out_of_range"),
    ("loan_amount", -2500.0, "out_of_range"),
    ("age", "forty-two", "wrong_type"),
    ("num_credit_lines", "several", "wrong_type"),
)


def check_traffic_scenario(scenario: str, severity: float) -> None:
    """A training scenario, or an incident only traffic can send (``invalid_rows``)."""
    if scenario not in TRAFFIC_SCENARIOS:
        raise DataError(f"unknown scenario {scenario!r}; choose one of {', '.join(TRAFFIC_SCENARIOS)}")
    check_scenario("none" if scenario == INVALID_ROWS else scenario, severity)  # the severity's bounds


@dataclass
class TrafficSummary:
    scenario: str
    severity: float
    requests: int = 0
    rows: int = 0
    ok: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    labels_sent: int = 0
    labels_failed: int = 0
    versions: dict[str, int] = field(default_factory=dict)
    started_at: float = 0.0
    seconds: float = 0.0

    @property
    def achieved_rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def failed_requests(self) -> int:
        return sum(self.failed.values())


@dataclass
class TrafficControl:
    """Steers a running :func:`run_traffic` from another thread: the scenario in force, or stop."""

    scenario: str = "none"
    severity: float = 1.0
    stop: threading.Event = field(default_factory=threading.Event)

    def switch(self, scenario: str, severity: float = 1.0) -> None:
        check_traffic_scenario(scenario, severity)
        self.scenario, self.severity = scenario, severity


def check_loopback(host: str) -> None:
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise DataError(f"traffic goes to loopback addresses only; SANDBOX_HOST is {host!r}")


def check_traffic(rps: float, duration: float, scenario: str, severity: float, rows_per_request: int) -> None:
    if not 0 < rps <= MAX_RPS:
        raise DataError(f"--rps must be in (0, {MAX_RPS:g}], got {rps}")
    if not 0 < duration <= MAX_DURATION_S:
        raise DataError(f"--duration must be in (0, {MAX_DURATION_S:g}] seconds, got {duration}")
    if not 1 <= rows_per_request <= 1000:
        raise DataError(f"--rows-per-request must be 1..1000, got {rows_per_request}")
    check_traffic_scenario(scenario, severity)


def rows_with_truth(
    n: int, scenario: str, severity: float, seed: int, reference_std: dict
) -> tuple[list, list]:
    """``n`` request rows and their true labels under the scenario (the generator's rule, then the scenario's)."""
    invalid = scenario == INVALID_ROWS
    frame = apply_scenario(
        generate_loans(n, seed), "none" if invalid else scenario, severity, seed, reference_std=reference_std
    )
    if scenario == "covariate_shift":  # the world changed, so the truth follows the rule on the new rows
        import numpy as np

        frame[LABEL] = default_rule(frame, np.random.default_rng(seed + 1))
    features = frame[LOAN_SCHEMA.names].astype(object).where(frame[LOAN_SCHEMA.names].notna(), None)
    rows = [
        {k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
        for r in features.to_dict("records")
    ]
    if invalid:
        break_rows(rows, min(INVALID_SHARE_PER_SEVERITY * severity, 1.0), seed)
    return rows, frame[LABEL].astype(int).tolist()


def break_rows(rows: list[dict], share: float, seed: int) -> None:
    """Break ``share`` of ``rows`` in place, each with the next of ``INVALID_VALUES``."""
    import random

    rng = random.Random(seed)
    broken = [i for i in range(len(rows)) if rng.random() < share]
    for turn, index in enumerate(broken):
        feature, value, _ = INVALID_VALUES[turn % len(INVALID_VALUES)]
        rows[index][feature] = value


class Pacer:
    """Paces requests at ``rps`` from ``start``; a late request goes at once (the rate catches up)."""

    def __init__(self, rps: float, clock: Callable[[], float] = time.monotonic):
        self.rps, self.clock, self.start = rps, clock, clock()

    def wait(self, sent: int) -> None:
        # The delay is read once: computed twice, it could turn negative between the check and the sleep.
        delay = self.start + sent / self.rps - self.clock()
        if delay > 0:
            time.sleep(delay)


class LabelScheduler:
    """Delayed ground truth: each answered batch's true labels go to the monitor ``delay`` s later."""

    def __init__(self, client: httpx.Client, monitor_url: str, delay: float, summary: TrafficSummary):
        self.client, self.url, self.delay, self.summary = client, f"{monitor_url}/labels", delay, summary
        self.pending: deque[tuple[float, list[dict]]] = deque()

    def add(self, answer: list[dict], truth: list[int]) -> None:
        labels = [{"request_id": r["request_id"], "label": y} for r, y in zip(answer, truth, strict=True)]
        self.pending.append((time.monotonic() + self.delay, labels))

    def send_due(self, force: bool = False) -> None:
        while self.pending and (force or self.pending[0][0] <= time.monotonic()):
            _, labels = self.pending.popleft()
            try:
                ok = self.client.post(self.url, json={"labels": labels}).status_code < 300
            except httpx.HTTPError:
                ok = False
            if ok:
                self.summary.labels_sent += len(labels)
            else:
                self.summary.labels_failed += len(labels)

    def drain(self) -> None:
        """Labels due after the traffic ended are still delivered, within their delay."""
        if self.pending:
            time.sleep(max(0.0, self.pending[-1][0] - time.monotonic()))
        self.send_due(force=True)


class RowSource:
    """Generated rows with their truth, about a second of traffic at a time, for the scenario in force."""

    def __init__(self, rows_per_request: int, batch_rows: int, seed: int):
        clean = generate_loans(5_000, seed=12345)
        self.reference_std = {c: float(clean[c].std()) for c in LOAN_SCHEMA.numeric}
        self.rows_per_request, self.batch_rows, self.seed = rows_per_request, batch_rows, seed
        self.buffer: list[tuple[dict, int]] = []
        self.buffered_as: tuple[str, float] | None = None
        self.chunk = 0

    def take(self, scenario: str, severity: float) -> list[tuple[dict, int]]:
        if (scenario, severity) != self.buffered_as:  # an incident starts now, not after the buffer
            self.buffer, self.buffered_as = [], (scenario, severity)
        while len(self.buffer) < self.rows_per_request:  # label_shift keeps about a third of a batch
            rows, truth = rows_with_truth(
                self.batch_rows, scenario, severity, self.seed * 100_003 + self.chunk, self.reference_std
            )
            self.buffer.extend(zip(rows, truth, strict=True))
            self.chunk += 1
        sent, self.buffer = self.buffer[: self.rows_per_request], self.buffer[self.rows_per_request :]
        return sent


def run_traffic(
    settings: Settings,
    rps: float = 10,
    duration: float = 60,
    scenario: str = "none",
    severity: float = 1.0,
    label_delay: float | None = None,
    rows_per_request: int = 1,
    seed: int = 0,
    on_progress: Callable[[TrafficSummary], None] = lambda summary: None,
    control: TrafficControl | None = None,
) -> TrafficSummary:
    """Send ``rps`` requests/s for ``duration`` s; post each row's true label ``label_delay`` s later.

    Without ``label_delay`` no labels are sent. With a ``control``, its scenario replaces
    ``scenario``/``severity`` from the next request on, and setting ``control.stop`` ends the run early.
    """
    check_traffic(rps, duration, scenario, severity, rows_per_request)
    check_loopback(settings.host)
    summary = TrafficSummary(scenario=scenario, severity=severity, started_at=time.time())
    failed, versions = Counter(), Counter()
    source = RowSource(rows_per_request, max(rows_per_request, int(rps * rows_per_request)), seed)
    pacer = Pacer(rps)
    with httpx.Client(timeout=10) as client:
        labels = LabelScheduler(client, settings.monitor_url, label_delay or 0.0, summary)
        while (elapsed := time.monotonic() - pacer.start) < duration:
            if control is not None:
                if control.stop.is_set():
                    break
                scenario, severity = control.scenario, control.severity
            pacer.wait(summary.requests)
            sent = source.take(scenario, severity)
            summary.requests += 1
            summary.rows += len(sent)
            try:
                response = client.post(
                    f"{settings.serving_url}/predict", json={"rows": [row for row, _ in sent]}
                )
                status = str(response.status_code)
            except httpx.HTTPError as exc:
                response, status = None, type(exc).__name__
            if response is not None and response.status_code == 200:
                summary.ok += 1
                answer = response.json()
                versions.update(r["model_version"] for r in answer)
                if label_delay is not None:
                    labels.add(answer, [y for _, y in sent])
            else:
                failed[status] += 1
            labels.send_due()
            if summary.requests % max(1, int(rps)) == 0:
                summary.seconds = elapsed
                summary.failed, summary.versions = dict(failed), dict(versions)
                on_progress(summary)
        labels.drain()
    summary.seconds = time.monotonic() - pacer.start
    summary.failed, summary.versions = dict(failed), dict(versions)
    return summary


def record_incident(settings: Settings, summary: TrafficSummary) -> None:
    """Append the incident's start to ``$SANDBOX_HOME/incidents.jsonl`` (time-to-detect starts here)."""
    settings.home.mkdir(parents=True, exist_ok=True)
    with (settings.home / "incidents.jsonl").open("a") as fh:
        fh.write(
            json.dumps(
                {"scenario": summary.scenario, "severity": summary.severity, "started_at": summary.started_at}
            )
            + "\n"
        )


def as_dict(summary: TrafficSummary) -> dict:
    return {
        **asdict(summary),
        "achieved_rps": round(summary.achieved_rps, 2),
        "failed_requests": summary.failed_requests,
    }
