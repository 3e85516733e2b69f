"""skin-automl: searches, retrains, ensembles and exports CNNs for HAM10000 dermoscopy images.

The Python API (:mod:`automl.api`) is here: ``automl.run``, ``automl.search``, ``automl.retrain``,
``automl.ensemble``, ``automl.export``, ``automl.predict``, ``automl.evaluate`` and ``automl.load_run``, each doing
what the command of the same name does. Importing automl is cheap: TensorFlow and Ray load on the first call.
"""

import sys
import types

__version__ = "0.2.0"  # the one place: pyproject.toml reads it (dynamic version)

from automl.api import Run, ensemble, evaluate, export, load_run, predict, retrain, run, search  # noqa: E402

__all__ = ["Run", "__version__", "ensemble", "evaluate", "export", "load_run", "predict", "retrain", "run", "search"]


class _Package(types.ModuleType):
    """``automl.ensemble``, ``automl.evaluate``, ... stay the API functions when the modules that implement those
    commands (``automl/ensemble.py``, ...) are imported: Python would otherwise bind each module to the package
    attribute of its name. The modules are reached as ever with ``from automl.ensemble import ...``."""

    def __setattr__(self, name, value):
        if name in __all__ and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
