# The one project image (mlops-sandbox:<version>): the pipeline's components (KFP base_image),
# serving, monitor and retrainer. Built by `sandbox up --kind`; `make test-image` builds it here
# against a debootstrap base (--build-arg BASE_IMAGE=...).
#
# The default base is pinned to a Python patch release and a Debian release; bump both on purpose.
ARG BASE_IMAGE=python:3.11.14-slim-bookworm
# checkov:skip=CKV_DOCKER_7: FROM names ARG BASE_IMAGE, whose default above is a pinned version tag (tests/manifests checks it is not latest)

# ---- build: a venv with the dependencies, then the project (no build tools reach the final stage) --
FROM ${BASE_IMAGE} AS build
# UV_SYSTEM_CERTS: trust the base image's CA store (a proxy's CA added to it is then honoured too).
# UV_COMPILE_BYTECODE: the runtime root is read-only and runs with PYTHONDONTWRITEBYTECODE=1, so a
# .pyc not written here is never written: every process would compile sklearn/mlflow/kfp from source
# (imports 3-5x slower). tests/manifests/test_image.py checks the image holds them.
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 UV_NO_CACHE=1 UV_LINK_MODE=copy UV_SYSTEM_CERTS=1 \
    UV_COMPILE_BYTECODE=1
# uv resolves this dependency set in seconds where pip takes minutes; it stays in this stage.
RUN python3 -m venv /opt/uv && /opt/uv/bin/pip install -q "uv==0.13.9" && python3 -m venv /opt/venv
WORKDIR /src
# Dependencies first, from pyproject.toml alone: this layer is rebuilt only when they change.
COPY pyproject.toml ./
RUN /opt/uv/bin/uv pip install --python /opt/venv/bin/python -r pyproject.toml
COPY README.md ./
COPY sandbox ./sandbox
COPY pipelines ./pipelines
COPY services ./services
RUN /opt/uv/bin/uv pip install --python /opt/venv/bin/python --no-deps .

# ---- runtime ---------------------------------------------------------------------------------------
FROM ${BASE_IMAGE}
# checkov:skip=CKV_DOCKER_2: one image runs five different programs (and pipeline steps that exit); each Deployment has its own probes on the program's real health endpoint
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /tmp --shell /usr/sbin/nologin sandbox \
    && mkdir -p /data /app && chown 10001:10001 /data
COPY --from=build /opt/venv /opt/venv
# Light, quiet and offline (as the embedded stack): no MLflow job runner, no telemetry, no BentoML
# tracking. HOME and caches in /tmp, so the root filesystem can be read-only in the cluster.
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false \
    MLFLOW_DISABLE_TELEMETRY=true \
    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false \
    BENTOML_DO_NOT_TRACK=True \
    SANDBOX_HOME=/data \
    SANDBOX_HOST=0.0.0.0
WORKDIR /app
USER 10001:10001
CMD ["sandbox", "--help"]
