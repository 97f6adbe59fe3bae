"""The ML stages as plain functions (data, validate, train, evaluate, register), their KFP components and runners."""

import os

# OpenMP threads that sleep while they wait for work, in every process that trains or scores the trees
# (the caller's own value wins). libgomp reads this once, when scikit-learn first loads it, and every
# use of the model goes through this package first. Its default spins: on shared cores the trees'
# spinning threads made `train` 20-60x slower (0.4 s -> 8-24 s at load 4-9) and the inverted_labels
# test 7x slower (31 s -> 208 s with both cores busy), measured here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
