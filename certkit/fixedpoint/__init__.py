"""Fixed points of nonnegative nets (paper 001): ``certkit fixedpoint``."""
from .analysis import FixedPointReport, analyse, perron_bounds

__all__ = ["FixedPointReport", "analyse", "perron_bounds"]
