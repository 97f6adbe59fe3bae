"""The supervised programs' environment: what each needs of its own."""

from sandbox import local_stack
from sandbox.settings import Settings


def test_serving_has_a_bentoml_home_of_its_own(tmp_path):
    # `bentoml serve` empties <BENTOML_HOME>/prometheus_multiproc_dir when it starts: a shared home
    # lets any other serve on the machine erase this stack's metrics.
    settings = Settings(home=tmp_path / "stack")
    serving = next(p for p in local_stack.programs(settings) if p.name == "serving")
    assert serving.env["BENTOML_HOME"] == str(settings.home / "bentoml")
    assert 'BENTOML_HOME="' + str(settings.home / "bentoml") in local_stack.render_config(
        settings, local_stack.programs(settings)
    )
