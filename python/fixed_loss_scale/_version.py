"""The package's version, defined here only: pyproject.toml reads it (setuptools'
dynamic version) and `fixed_loss_scale.__version__` re-exports it."""

__version__ = "0.1.0"
