"""Data-set certification (``certify_dataset``): bookkeeping, and soundness against a stronger attack.

The soundness check runs its own PGD (on a torch copy of the ONNX weights, built
here independently of certkit's importer) against every verified sample, and
checks the final points with onnxruntime: a verified sample must never change
its prediction anywhere in its ball.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

import certkit
from certkit.errors import DataError, UsageError
from certkit.verify.certify import STAGES
from certkit.verify.dataset import certify_dataset, load_dataset

from tests.helpers.examples import CONV, DATA, DATA_CONV, FC, SHARED
from tests.helpers.examples import UNSAT as UNSAT_SPEC

VERDICTS = ("verified", "falsified", "timeout", "unknown", "misclassified")



# ---------------------------------------------------------------------------------------------- helpers


class TorchNet(torch.nn.Module):
    """A float64 torch copy of a small ONNX graph (Gemm, Relu, Conv, Flatten only)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        m = onnx.load(str(path))
        self.init = {i.name: torch.as_tensor(numpy_helper.to_array(i).astype(np.float64)) for i in m.graph.initializer}
        self.nodes = list(m.graph.node)
        inp = m.graph.input[0]
        self.input_name = inp.name
        self.shape = [d.dim_value for d in inp.type.tensor_type.shape.dim][1:]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (b, n) flat -> (b, n_out)
        env = {self.input_name: x.reshape(x.shape[0], *self.shape)}
        out = None
        for nd in self.nodes:
            a = {at.name: onnx.helper.get_attribute_value(at) for at in nd.attribute}
            ins = [env[n] if n in env else self.init[n] for n in nd.input]
            if nd.op_type == "Gemm":
                w = ins[1].T if a.get("transB", 0) else ins[1]
                out = a.get("alpha", 1.0) * ins[0] @ w + a.get("beta", 1.0) * ins[2]
            elif nd.op_type == "Relu":
                out = torch.relu(ins[0])
            elif nd.op_type == "Conv":
                p = a.get("pads", [0, 0, 0, 0])
                assert p[:2] == p[2:]
                out = torch.nn.functional.conv2d(ins[0], ins[1], ins[2], stride=a.get("strides", [1, 1]),
                                                 padding=p[:2])
            elif nd.op_type == "Flatten":
                out = ins[0].reshape(ins[0].shape[0], -1)
            else:  # pragma: no cover
                raise NotImplementedError(nd.op_type)
            env[nd.output[0]] = out
        return out


class Ort:
    def __init__(self, path: Path) -> None:
        self.s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        inp = self.s.get_inputs()[0]
        self.name, self.shape = inp.name, [d if isinstance(d, int) else 1 for d in inp.shape]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
        return np.stack([np.asarray(self.s.run(None, {self.name: r.reshape(self.shape)})[0]).reshape(-1)
                         for r in x])


def project(x: torch.Tensor, x0: torch.Tensor, eps: float, norm: str, domain) -> torch.Tensor:
    """Into {||x - x0|| <= eps} (then the domain box, which keeps the point in the ball since x0 is in it)."""
    d = x - x0
    if norm == "linf":
        d = d.clamp(-eps, eps)
    else:
        nrm = d.flatten(1).norm(dim=1).clamp(min=1e-30).reshape(-1, *([1] * (d.dim() - 1)))
        d = d * torch.clamp(eps / nrm, max=1.0)
    x = x0 + d
    return x.clamp(domain[0], domain[1]) if domain is not None else x


def pgd(net: TorchNet, x0: np.ndarray, y: np.ndarray, eps: float, norm: str, domain, steps: int = 100,
        restarts: int = 5, seed: int = 0) -> np.ndarray:
    """Untargeted PGD on the margin max_{j != y} f_j - f_y; returns the final points (b, restarts, n)."""
    gen = torch.Generator().manual_seed(seed)
    b, n = x0.shape
    c = torch.as_tensor(x0, dtype=torch.float64)[:, None].expand(b, restarts, n).reshape(b * restarts, n)
    lab = torch.as_tensor(y).repeat_interleave(restarts)
    if norm == "linf":
        start = c + eps * (2 * torch.rand(c.shape, generator=gen, dtype=torch.float64) - 1)
    else:
        g = torch.randn(c.shape, generator=gen, dtype=torch.float64)
        r = torch.rand(c.shape[0], 1, generator=gen, dtype=torch.float64) ** (1 / n)
        start = c + eps * r * g / g.norm(dim=1, keepdim=True)
    start = start.reshape(b, restarts, n)
    start[:, 0] = c.reshape(b, restarts, n)[:, 0]  # one run from the centre
    x = project(start.reshape(b * restarts, n), c, eps, norm, domain)
    mask = torch.nn.functional.one_hot(lab, 10).bool()
    for t in range(steps):
        x = x.detach().requires_grad_(True)
        f = net(x)
        loss = f.masked_fill(mask, -1e9).amax(dim=1) - f[mask]
        grad, = torch.autograd.grad(loss.sum(), x)
        alpha = eps * (0.25 * (1 - t / steps) + 0.01)
        with torch.no_grad():
            if norm == "linf":
                x = x + alpha * grad.sign()
            else:
                x = x + alpha * grad / grad.norm(dim=1, keepdim=True).clamp(min=1e-30)
            x = project(x, c, eps, norm, domain)
    return x.detach().reshape(b, restarts, n).numpy()


def to_float32_in_ball(x: np.ndarray, x0: np.ndarray, eps: float, norm: str, domain) -> tuple[np.ndarray, np.ndarray]:
    """Shrink a little towards the centre, round to float32; (points, inside-mask checked in float64)."""
    x32 = (x0[:, None] + (x - x0[:, None]) * (1 - 1e-5)).astype(np.float32)
    d = x32.astype(np.float64) - x0[:, None]
    ok = (np.abs(d).max(axis=-1) <= eps) if norm == "linf" else (np.linalg.norm(d, axis=-1) <= eps)
    if domain is not None:
        ok &= ((x32 >= domain[0]) & (x32 <= domain[1])).all(axis=-1)
    return x32, ok


def load(model_path: Path, data_path: Path):
    m = certkit.load_model(model_path)
    x, y = load_dataset(str(data_path), m)
    return m, x, y


def counts(res) -> dict[str, int]:
    return {v: sum(s.verdict == v for s in res.samples) for v in VERDICTS}


# ---------------------------------------------------------------------------------------------- bookkeeping


@pytest.fixture(scope="module")
def fc():
    return load(FC, DATA)


@pytest.fixture(scope="module")
def conv():
    return load(CONV, DATA_CONV)


def test_load_dataset_shapes(fc, conv):
    _, x, y = fc
    assert x.shape == (450, 64) and x.dtype == np.float64 and y.shape == (450,) and y.dtype == np.int64
    _, xc, yc = conv
    assert xc.shape == (450, 64)
    np.testing.assert_array_equal(x, xc)  # the same images
    np.testing.assert_array_equal(y, yc)


def test_load_dataset_errors(tmp_path):
    m = certkit.load_model(FC)
    cases = {"shape": dict(x=np.zeros((10, 63), np.float32), y=np.zeros(10, np.int64)),
             "noy": dict(x=np.zeros((10, 64), np.float32)),
             "count": dict(x=np.zeros((10, 64), np.float32), y=np.zeros(9, np.int64)),
             "label": dict(x=np.zeros((10, 64), np.float32), y=np.full(10, 10, np.int64)),
             "ydims": dict(x=np.zeros((10, 64), np.float32), y=np.zeros((10, 1), np.int64))}
    for name, arrays in cases.items():
        f = tmp_path / f"{name}.npz"
        np.savez(f, **arrays)
        with pytest.raises(DataError, match=name):
            load_dataset(str(f), m)
    np.save(tmp_path / "plain.npy", np.zeros((10, 64)))
    with pytest.raises(DataError, match="plain.npy"):
        load_dataset(str(tmp_path / "plain.npy"), m)
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(DataError, match="junk.npz"):
        load_dataset(str(tmp_path / "junk.npz"), m)
    with pytest.raises(DataError, match="absent.npz"):
        load_dataset(str(tmp_path / "absent.npz"), m)


def test_misclassified_are_exactly_onnxruntime_errors(fc, conv):
    for (m, x, y), path in ((fc, FC), (conv, CONV)):
        res = certify_dataset(m, x, y, 0.0, "linf", (0.0, 1.0), "interval")
        wrong = set(np.nonzero(Ort(path)(x).argmax(axis=1) != y)[0].tolist())
        assert {s.index for s in res.samples if s.verdict == "misclassified"} == wrong
        assert len(wrong) == 17  # 96.22 % test accuracy on 450 images (models/README.md)
        # at radius 0 every correctly classified sample with a positive margin is verified
        assert counts(res)["verified"] == 450 - 17


@pytest.mark.parametrize("norm,eps", [("linf", 0.02), ("linf", 0.05), ("l2", 0.1), ("l2", 0.3)])
def test_counts_add_up_fc(fc, norm, eps):
    m, x, y = fc
    res = certify_dataset(m, x, y, eps, norm, (0.0, 1.0), "alpha")
    c = counts(res)
    assert sum(c.values()) == res.total == 450
    assert res.certified == c["verified"]
    assert [s.index for s in res.samples] == list(range(450))
    assert all(s.label == y[s.index] for s in res.samples)
    for s in res.samples:
        if s.verdict == "verified":  # by the bounds: every row positive
            assert s.margin_lower > 0 and s.stage in STAGES["alpha"]
        elif s.verdict == "misclassified":
            assert np.isnan(s.margin_lower)
        elif s.verdict == "falsified":
            assert s.margin_lower <= 0  # a real counterexample: no sound bound can be positive
        assert s.time >= 0


def test_radius_monotone(fc):
    """A larger ball certifies no more samples: verified at the larger radius implies verified at the smaller."""
    m, x, y = fc
    small = certify_dataset(m, x, y, 0.01, "linf", (0.0, 1.0), "deeppoly")
    large = certify_dataset(m, x, y, 0.03, "linf", (0.0, 1.0), "deeppoly")
    vs = {s.index for s in small.samples if s.verdict == "verified"}
    vl = {s.index for s in large.samples if s.verdict == "verified"}
    assert vl <= vs
    assert all(a.margin_lower >= b.margin_lower - 1e-9 for a, b in zip(small.samples, large.samples)
               if a.verdict not in ("misclassified",))


def test_batch_size_does_not_change_bounds(fc):
    m, x, y = fc
    a = certify_dataset(m, x[:80], y[:80], 0.03, "linf", (0.0, 1.0), "deeppoly", batch_size=7)
    b = certify_dataset(m, x[:80], y[:80], 0.03, "linf", (0.0, 1.0), "deeppoly", batch_size=80)
    for sa, sb in zip(a.samples, b.samples):
        assert sa.index == sb.index
        assert (sa.verdict == "verified") == (sb.verdict == "verified")
        if not np.isnan(sa.margin_lower):
            assert abs(sa.margin_lower - sb.margin_lower) <= 1e-9 * (1 + abs(sa.margin_lower))


def test_api_wrapper_and_bad_arguments(fc):
    m, x, y = fc
    res = certkit.certify_dataset(m, x[:20].reshape(20, 1, 8, 8), y[:20], 0.02, "linf", (0.0, 1.0), "alpha")
    assert res.total == 20 and res.eps == 0.02 and res.norm == "linf"
    with pytest.raises(DataError):
        certify_dataset(m, x[:5], y[:5], 0.02, "l3")
    with pytest.raises(UsageError):
        certify_dataset(m, x[:5], y[:5], 0.02, batch_size=0)
    empty = certify_dataset(m, x[:0], y[:0], 0.02)
    assert empty.total == 0 and empty.certified == 0


# ---------------------------------------------------------------------------------------------- soundness vs PGD


def _soundness(model_path: Path, x, y, res, eps: float, norm: str, domain) -> None:
    ver = np.array([s.index for s in res.samples if s.verdict == "verified"])
    assert len(ver) > 0
    net = TorchNet(model_path)
    xs = pgd(net, x[ver], y[ver], eps, norm, domain, steps=100, restarts=5, seed=1)
    x32, ok = to_float32_in_ball(xs, x[ver], eps, norm, domain)
    assert ok.all()
    ys = Ort(model_path)(x32.reshape(-1, x.shape[1])).reshape(len(ver), xs.shape[1], -1)
    lab = y[ver][:, None]
    top = np.take_along_axis(ys, lab[..., None], axis=2)[..., 0]
    others = ys.copy()
    np.put_along_axis(others, lab[..., None], -np.inf, axis=2)
    broken = others.max(axis=2) >= top  # a tie counts as unsafe
    assert not broken.any(), f"verified samples falsified by PGD: {ver[broken.any(axis=1)].tolist()}"


@pytest.mark.parametrize("model_name,norm,eps", [("fc", "linf", 0.02), ("fc", "linf", 0.05), ("fc", "l2", 0.1),
                                                 ("fc", "l2", 0.3), ("conv", "linf", 0.02), ("conv", "l2", 0.2)])
def test_verified_samples_survive_pgd(fc, conv, model_name, norm, eps):
    m, x, y = fc if model_name == "fc" else conv
    path = FC if model_name == "fc" else CONV
    n = 450 if model_name == "fc" else 64
    x, y = x[:n], y[:n]
    res = certify_dataset(m, x, y, eps, norm, (0.0, 1.0), "alpha")
    assert sum(counts(res).values()) == n
    _soundness(path, x, y, res, eps, norm, (0.0, 1.0))


def test_pgd_is_strong_enough(fc):
    """Sanity check of the test's own attack: at a large radius it breaks the samples certkit falsifies."""
    m, x, y = fc
    res = certify_dataset(m, x, y, 0.1, "linf", (0.0, 1.0), "alpha")
    fal = np.array([s.index for s in res.samples if s.verdict == "falsified"])
    assert len(fal) > 20
    xs = pgd(TorchNet(FC), x[fal], y[fal], 0.1, "linf", (0.0, 1.0), steps=100, restarts=5)
    x32, ok = to_float32_in_ball(xs, x[fal], 0.1, "linf", (0.0, 1.0))
    pred = Ort(FC)(x32.reshape(-1, 64)).argmax(axis=1).reshape(len(fal), -1)
    assert ((pred != y[fal][:, None]) & ok).any(axis=1).mean() >= 0.9


# ---------------------------------------------------------------------------------------------- complete per sample


@pytest.mark.parametrize("backend", ["bab", "auto"])
def test_complete_backends_per_sample(fc, backend):
    """bab/auto decide samples one by one after the batched bounds: at least alpha's count, within
    each sample's budget, every verified sample surviving PGD and every witness validating."""
    m, x, y = fc
    x, y = x[:40], y[:40]
    base = certify_dataset(m, x, y, 0.06, "linf", (0.0, 1.0), "alpha")
    res = certify_dataset(m, x, y, 0.06, "linf", (0.0, 1.0), backend, timeout=1.0, seed=3)
    assert res.certified >= base.certified
    batched = res.timings["bounds"] + res.timings["attack"]  # shared by the samples of a batch
    assert all(s.time <= batched + 1.0 + 0.5 for s in res.samples)  # plus its own budget (and 0.5 s)
    _soundness(FC, x, y, res, 0.06, "linf", (0.0, 1.0))
    for s in res.samples:
        if s.verdict == "falsified":
            w = s.witness.astype(np.float64)
            assert np.abs(w - x[s.index]).max() <= 0.06 and w.min() >= 0 and w.max() <= 1
            assert Ort(FC)(s.witness[None].astype(np.float32)).argmax() != y[s.index]


def test_l1_balls(fc):
    """L_1 balls: verified samples keep their label at every vertex of the ball (+-eps e_i, clipped
    to the domain) and at random points of it, under onnxruntime."""
    m, x, y = fc
    x, y = x[:30], y[:30]
    eps = 0.3
    res = certify_dataset(m, x, y, eps, "l1", (0.0, 1.0), "deeppoly")
    assert sum(counts(res).values()) == 30 and res.certified > 0
    rng = np.random.default_rng(0)
    n = x.shape[1]
    for s in res.samples:
        if s.verdict != "verified":
            continue
        x0 = x[s.index]
        pts = [x0 + sg * eps * np.eye(n)[i] for i in range(n) for sg in (1, -1)]
        for _ in range(200):
            v = rng.laplace(size=n)
            pts.append(x0 + eps * rng.uniform() * v / np.abs(v).sum())
        pts = np.clip(np.array(pts), 0.0, 1.0)
        pts = pts[np.abs(pts - x0).sum(axis=1) <= eps]
        assert (Ort(FC)(pts.astype(np.float32)).argmax(axis=1) == y[s.index]).all()


# ---------------------------------------------------------------------------------------------- paper-002


def test_paper_002_mnist_relu_2_50():
    """mnist_relu_2_50 on MNIST test images 200..399, L_inf eps 0.02, domain [0, 1], deeppoly: 155 of 200."""
    model_path = SHARED / "data" / "vnn_models" / "mnist_relu_2_50.onnx"
    data_path = SHARED / "data" / "mnist.npz"
    for p in (model_path, data_path):
        if not p.exists():
            pytest.skip(f"../shared not found: {p} is missing")
    d = np.load(data_path)
    x = d["x_test"][200:400].reshape(200, -1).astype(np.float32) / 255.0
    y = d["y_test"][200:400].astype(np.int64)
    m = certkit.load_model(model_path)
    res = certkit.certify_dataset(m, x, y, 0.02, "linf", (0.0, 1.0), "deeppoly")
    assert res.total == 200
    assert res.certified == 155
    _soundness(model_path, x.astype(np.float64), y, res, 0.02, "linf", (0.0, 1.0))


def test_cli_dataset_options(tmp_path, capsys):
    """--timeout per sample, --total-timeout, --seed, --out DIR with each counterexample (npz and the
    VNN-COMP format), and a certificate whose complete-procedure proofs certkit check re-derives."""
    from certkit.cli import main

    out, cert = tmp_path / "cex", tmp_path / "c.json"
    rc = main(["certify", str(FC), "--dataset", str(DATA), "--eps", "0.08", "--domain", "0", "1", "--limit", "30",
               "--backend", "bab", "--timeout", "1", "--total-timeout", "120", "--seed", "7",
               "--out", str(out), "--json", str(cert)])
    assert rc == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("certified: ")
    doc = __import__("json").loads(cert.read_text())
    assert doc["options"]["seed"] == 7 and doc["options"]["timeout"] == 1
    fal = [s for s in doc["per_sample"] if s["verdict"] == "falsified"]
    assert fal and len(list(out.glob("*.npz"))) == len(fal) == len(list(out.glob("*.counterexample")))
    for s in fal:
        z = np.load(out / f"sample_{s['index']}.npz")
        assert int(z["label"]) == s["label"]
        assert Ort(FC)(z["x"][None].astype(np.float32)).argmax() != s["label"]
        assert (out / f"sample_{s['index']}.counterexample").read_text().startswith("sat\n((X_0 ")
    assert any("proof" in s for s in doc["per_sample"])  # some samples need ReLU splitting
    assert main(["check", str(cert)]) == 0
    # --out must be a folder here, and a file for a VNN-LIB spec
    f = tmp_path / "file.txt"
    f.write_text("x")
    assert main(["certify", str(FC), "--dataset", str(DATA), "--eps", "0.08", "--out", str(f)]) == 2
    assert main(["certify", str(FC), str(UNSAT_SPEC), "--out", str(tmp_path)]) == 2
    assert main(["certify", str(FC), str(UNSAT_SPEC), "--total-timeout", "5"]) == 2
