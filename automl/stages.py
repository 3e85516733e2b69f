"""The post-search stages' choices and defaults, owned here and imported by the stages and the command line.

Nothing heavy is imported: the command line builds its flags from these without loading numpy or TensorFlow.
"""

#: Configurations of the search that ``automl retrain`` trains again, and seeds for each.
TOP_K = 5
SEEDS = 1
#: How ``automl ensemble`` weighs the members (:mod:`automl.ensemble_methods`).
ENSEMBLE_METHODS = ("greedy", "mean", "weighted")
ENSEMBLE_METHOD = "greedy"
#: The exported model's decision rule (:mod:`automl.posthoc`): the user's choice, never an objective's.
DECISIONS = ("balanced", "prior")
DECISION = "balanced"
