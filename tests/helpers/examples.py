"""Paths of the shipped examples (models/, vnnlib/) and of ../shared, for every test module."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
MODELS, VNN = ROOT / "models", ROOT / "vnnlib"
FC, CONV = MODELS / "digits_fc.onnx", MODELS / "digits_conv.onnx"
DATA, DATA_CONV = MODELS / "digits_test.npz", MODELS / "digits_test_conv.npz"
UNSAT = VNN / "digits_fc_0_eps0.02.vnnlib"  # holds
SAT = VNN / "digits_fc_0_eps0.3.vnnlib"  # violated
MARGIN = VNN / "digits_fc_margin.vnnlib"  # holds
CONV_UNSAT = VNN / "digits_conv_0_eps0.02.vnnlib"  # holds
