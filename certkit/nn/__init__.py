"""PyTorch building blocks for the structured nets of papers 000, 001 and 004 and the
implicit-bias layers of paper 003.

Build and train with these modules (call :func:`project` after every optimiser step),
then :func:`export_onnx` and certify the file with certkit.
"""
from .activations import CappedLeakyReLU, MaxMin, NActivation
from .export import export_onnx, freeze
from .ibnn import (IBNNConv2d, IBNNLayer, IBNNLinear, IBNNLite, IBNNLiteConv2d, uniform_kernel,
                   window_kernel)
from .layers import (ABBAConv2d, ABBALinear, AOLLinear, Halving, NonnegConv2d, NonnegLinear,
                     SignedDoubling, abba_matrix, project)

__all__ = ["ABBAConv2d", "ABBALinear", "AOLLinear", "CappedLeakyReLU", "Halving", "IBNNConv2d",
           "IBNNLayer", "IBNNLinear", "IBNNLite", "IBNNLiteConv2d", "MaxMin", "NActivation", "NonnegConv2d",
           "NonnegLinear", "SignedDoubling", "abba_matrix", "export_onnx", "freeze", "project",
           "uniform_kernel", "window_kernel"]
