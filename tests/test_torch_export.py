"""A user's own PyTorch CNN (Conv, BatchNorm2d, a residual block, ReLU, flatten, Linear) exported by
``torch.onnx.export`` loads, matches onnxruntime and the torch module, and certifies an L_inf
robustness property: unsat at a small radius, sat at a large one (issue 11, "Reach").

torch 2.13's default exporter is the dynamo one (``dynamo=True``): it needs the ``onnxscript``
package (the ``test`` extra installs it) and writes the weights to ``model.onnx.data`` beside the
model (``external_data=True``). Its first call in a process costs about 10-15 s (it imports
torch.export and onnxscript), so it runs once per module; the TorchScript exporter
(``dynamo=False``) is tested too.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")

import certkit  # noqa: E402
from tests.helpers.onnx_builders import ort_run  # noqa: E402


class Residual(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn, self.conv2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(torch.relu(self.bn(self.conv1(x))))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.block = nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), Residual(4)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.block(torch.relu(self.bn(self.conv(x))))), 1))


def _net() -> Net:
    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net.eval()


EXPORTERS = ["default", "torchscript"]


@pytest.fixture(scope="module", params=EXPORTERS)
def exported(request, tmp_path_factory):
    """(torch module, path of its ONNX export) for each exporter."""
    net = _net()
    folder = tmp_path_factory.mktemp(request.param)
    path = str(folder / "net.onnx")
    x = torch.rand(1, 1, 8, 8)
    if request.param == "default":
        pytest.importorskip("onnxscript", reason="torch.onnx.export's default (dynamo) exporter needs onnxscript")
        torch.onnx.export(net, (x,), path)
        assert os.path.exists(path + ".data"), "the default exporter writes external data"
    else:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (x,), path, dynamo=False, input_names=["x"], output_names=["y"])
    return net, path


def test_export_matches_onnxruntime_and_torch(exported, tmp_path, monkeypatch):
    net, path = exported
    monkeypatch.chdir(tmp_path)  # the external data is found from anywhere
    model = certkit.load_model(path)
    assert model.graph.n_inputs == 64 and model.graph.n_outputs == 3
    x = np.random.default_rng(0).uniform(0, 1, (16, 64)).astype(np.float32)
    import onnx

    ref = ort_run(onnx.load(path), x.reshape(16, 1, 1, 8, 8))
    with torch.no_grad():
        want = net(torch.as_tensor(x).reshape(16, 1, 8, 8)).numpy().astype(np.float64)
    ours = model.graph(x)
    scale = max(1.0, float(np.abs(ref).max()))
    assert np.abs(ours - ref).max() <= 1e-5 * scale
    assert np.abs(ours - want).max() <= 1e-5 * scale
    assert np.abs(model.runner(x) - ref).max() <= 1e-6 * scale


def _robustness_spec(path, x0: np.ndarray, label: int, eps: float, n_out: int = 3) -> str:
    lines = [f"(declare-const X_{i} Real)" for i in range(x0.size)]
    lines += [f"(declare-const Y_{j} Real)" for j in range(n_out)]
    for i, v in enumerate(x0):
        lines += [f"(assert (>= X_{i} {max(0.0, float(v) - eps)!r}))", f"(assert (<= X_{i} {min(1.0, float(v) + eps)!r}))"]
    others = " ".join(f"(and (>= Y_{j} Y_{label}))" for j in range(n_out) if j != label)
    lines.append(f"(assert (or {others}))")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return str(path)


def test_export_certifies(exported, tmp_path):
    net, path = exported
    model = certkit.load_model(path)
    x0 = np.random.default_rng(1).uniform(0.2, 0.8, 64)
    with torch.no_grad():
        label = int(net(torch.as_tensor(x0, dtype=torch.float32).reshape(1, 1, 8, 8)).argmax())
    for eps, verdict in ((1e-3, "unsat"), (0.5, "sat")):
        spec = certkit.load_spec(_robustness_spec(tmp_path / f"r{eps}.vnnlib", x0, label, eps), model)
        res = certkit.certify(model, spec, "auto", timeout=30)
        assert res.verdict == verdict, (eps, res.verdict)
