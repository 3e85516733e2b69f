"""Numbers others published on HAM10000 / DermaMNIST, set beside ours in reports, the dashboard and benchmarks.

Each row names its split protocol and resolution: none used a lesion-grouped split, so their
scores are not directly comparable with ours on one (images of one lesion sit on both sides).
"""

from __future__ import annotations

#: Published results the report sets ours beside; none used a lesion-grouped split.
_DERMAMNIST = "official DermaMNIST (image-level, leaks)"
PUBLISHED = [
    {"source": "seed 000, proposed CNN + class weighting", "task": "multiclass", "resolution": "100x75",
     "split": "image-level random 80/10/10", "accuracy": 0.65, "macro_f1": 0.51},
    {"source": "seed 000, proposed CNN + augmented oversampling", "task": "multiclass", "resolution": "100x75",
     "split": "image-level random 80/10/10", "accuracy": 0.72, "macro_f1": 0.56},
    {"source": "seed 003, CNN (best strategy)", "task": "multiclass", "resolution": "224x224",
     "split": "'non-duplicated' train, duplicates in val/test (leaks)", "accuracy": 0.844, "macro_f1": 0.374},
    # MedMNIST v2 (Yang et al., Scientific Data 2023), Table: DermaMNIST test ACC / AUC.
    *({"source": f"MedMNIST v2, {model}", "task": "multiclass", "resolution": resolution, "split": _DERMAMNIST,
       "accuracy": acc, "auc": auc}
      for model, resolution, acc, auc in (
          ("ResNet-18 (28)", "28x28", 0.735, 0.917), ("ResNet-18 (224)", "224x224", 0.754, 0.920),
          ("ResNet-50 (28)", "28x28", 0.735, 0.913), ("ResNet-50 (224)", "224x224", 0.731, 0.912),
          ("auto-sklearn", "28x28", 0.719, 0.902), ("AutoKeras", "28x28", 0.749, 0.915),
          ("Google AutoML Vision", "28x28", 0.768, 0.914),
      )),
    {"source": "seed 001, weighted ensemble", "task": "binary", "resolution": "224x224",
     "split": "unstated", "accuracy": 0.880, "sensitivity": 0.735, "specificity": 0.934},
]
