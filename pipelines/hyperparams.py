"""The estimator's hyperparameters and their defaults (HistGradientBoostingClassifier).

``TrainParams`` (the pipeline's parameters) takes its defaults from here, and so does
``pipelines.train.build_model``: this module imports nothing, so neither the train step (which
then needs no settings) nor the pipeline's own process (which then needs no pandas) pays for it.
"""

DEFAULT_HYPERPARAMS = {"learning_rate": 0.1, "max_iter": 200, "max_depth": 6, "min_samples_leaf": 20}
HYPERPARAMS = tuple(DEFAULT_HYPERPARAMS)
