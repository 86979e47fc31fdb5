"""The shipped example model: a small CNN trained on scikit-learn's bundled `digits` (see digits.py)."""

from converter.models.digits import DigitsPaths, digits_paths

__all__ = ["DigitsPaths", "digits_paths"]
