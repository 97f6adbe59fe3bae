"""Test plumbing shared by tests/ and benchmarks/: one place for each of ports, waits, process groups,
the servers the tests start (MLflow, `bentoml serve`) and the headless browser.

``processes`` and ``servers`` import no pytest: the benchmarks use them too (they put the repository
root on ``sys.path`` to import ``tests.support``). ``browser`` is for tests only.
"""
