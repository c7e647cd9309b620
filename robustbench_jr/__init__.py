"""robustbench-jr: fooling-distance audits and Jacobian regularization for image classifiers."""

__version__ = "0.1.0"
