"""Bound computations. Importing the package imports no torch: the command line reads
:data:`ARITHMETICS` from here to declare ``--arithmetic``."""

#: The arithmetics of back-substitution's matrix products (:mod:`certkit.bounds.products32`).
ARITHMETICS = ("auto", "float64", "float32")
