"""The platform's names, defined once: repository root, kind cluster, kube context, namespaces, image.

Standard library only: ``python3 -m sandbox.kind_stack preflight`` and the Makefile read these
before the venv exists.
"""

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CLUSTER = "mlops-sandbox"
CONTEXT = f"kind-{CLUSTER}"
NAMESPACE = "mlops"
KFP_NAMESPACE = "kubeflow"
# The one project image: serving, monitor, retrainer and every pipeline step (KFP base_image).
IMAGE = os.environ.get("SANDBOX_IMAGE", "mlops-sandbox:0.1.0")

if __name__ == "__main__":  # `python3 -m sandbox.names CLUSTER`: one name, for the Makefile
    import sys

    print(globals()[sys.argv[1]])
