"""skin-automl: searches, retrains, ensembles and exports CNNs for HAM10000 dermoscopy images."""

__version__ = "0.1.0"
