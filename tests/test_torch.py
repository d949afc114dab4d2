"""Cross-check against PyTorch: torch.nn.functional.group_norm, its statistics and autograd."""
import numpy as np
import pytest

import gncpu
from gncpu import _reference as ref
from conftest import (BACKWARD_TOL, FLOATS, FORWARD_TOL, assert_close, assert_stats_close,
                      random_affine, random_array)

torch = pytest.importorskip("torch")

TORCH_CASES = [((2, 6, 17), 3), ((3, 12, 7, 5), 4), ((1, 8, 3, 4, 5), 2), ((4, 12), 4),
               ((2, 4, 2053), 1)]
TORCH_IDS = ["x".join(map(str, s)) + f"-G{g}" for s, g in TORCH_CASES]


def torch_group_norm(x, grad_out, num_groups, weight, bias, eps):
    """Torch's y, mean, rstd and autograd gradients of sum(grad_out * y)."""
    xt = torch.tensor(x, requires_grad=True)
    wt = None if weight is None else torch.tensor(weight, requires_grad=True)
    bt = None if bias is None else torch.tensor(bias, requires_grad=True)
    y = torch.nn.functional.group_norm(xt, num_groups, wt, bt, eps)
    (y * torch.tensor(grad_out)).sum().backward()
    n, c = x.shape[:2]
    _, mean, rstd = torch.ops.aten.native_group_norm(
        torch.tensor(x), None, None, n, c, int(np.prod(x.shape[2:], dtype=np.int64)),
        num_groups, eps)
    grads = [xt.grad.numpy()] + [None if t is None else t.grad.numpy() for t in (wt, bt)]
    return y.detach().numpy(), mean.numpy(), rstd.numpy(), grads


@pytest.mark.parametrize("affine", [False, True], ids=["plain", "affine"])
@pytest.mark.parametrize("dtype", FLOATS, ids=["f32", "f64"])
@pytest.mark.parametrize("case", TORCH_CASES, ids=TORCH_IDS)
def test_matches_torch(rng, case, dtype, affine):
    """Both sides carry their own rounding, so the bound is twice ours against float64."""
    shape, num_groups = case
    eps = 1e-5
    x, grad_out = random_array(rng, shape, dtype), random_array(rng, shape, dtype)
    weight, bias = random_affine(rng, shape[1], dtype) if affine else (None, None)
    y_t, mean_t, rstd_t, grads_t = torch_group_norm(x, grad_out, num_groups, weight, bias, eps)
    y, mean, rstd = gncpu.group_norm(x, num_groups, weight, bias, eps, return_stats=True)
    grads = gncpu.group_norm_backward(grad_out, x, mean, rstd, num_groups, weight)
    forward_tol, backward_tol = 2 * FORWARD_TOL[dtype], 2 * BACKWARD_TOL[dtype]
    assert_close(y, y_t, forward_tol, "y")
    assert_stats_close(mean, rstd, mean_t.reshape(mean.shape), rstd_t.reshape(rstd.shape),
                       forward_tol)
    assert_close(grads[0], grads_t[0], backward_tol, "grad_x")
    if affine:
        assert_close(grads[1], grads_t[1], backward_tol, "grad_weight")
        assert_close(grads[2], grads_t[2], backward_tol, "grad_bias")


@pytest.mark.parametrize("case", TORCH_CASES, ids=TORCH_IDS)
def test_reference_matches_torch_float64(rng, case):
    """The float64 twin the other tests trust agrees with an independent implementation."""
    shape, num_groups = case
    x, grad_out = random_array(rng, shape), random_array(rng, shape)
    weight, bias = random_affine(rng, shape[1])
    y_t, mean_t, rstd_t, grads_t = torch_group_norm(x, grad_out, num_groups, weight, bias, 1e-5)
    y, mean, rstd = ref.group_norm(x, num_groups, weight, bias)
    grads = ref.group_norm_backward(grad_out, x, mean, rstd, num_groups, weight)
    assert_stats_close(mean, rstd, mean_t.reshape(mean.shape), rstd_t.reshape(rstd.shape), 1e-12)
    for name, a, b in zip(("y", "grad_x", "grad_weight", "grad_bias"), (y,) + tuple(grads),
                          (y_t,) + tuple(grads_t)):
        assert_close(a, b, 1e-12, name)


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("activation", [None, "relu", "silu"], ids=["plain", "relu", "silu"])
@pytest.mark.parametrize("op", ["forward", "backward"])
def test_bench_torch_calls_compute_what_gncpu_computes(op, activation, layout):
    """`python -m gncpu bench` times torch doing the same work as gncpu: the same outputs
    (and gradients), to rounding, for every op, activation and layout it offers."""
    from gncpu.bench import contenders
    calls = contenders((2, 8, 6, 5), 4, "float32", op, 1, torch, False, layout, activation)
    ours, theirs = calls["gncpu"](), calls["torch"]()
    if op == "forward":
        ours, theirs = (ours,), (theirs,)
    for k, (a, b) in enumerate(zip(ours, theirs)):
        if layout == "nhwc" and k == 0:
            a = np.moveaxis(a, -1, 1)
        assert_close(a, b.numpy(), 1e-4, f"{op} output {k}")
