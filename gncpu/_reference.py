"""Float64 NumPy definitions of Group Norm that the tests and benchmarks trust.

These are deliberately plain: every statistic is computed in float64 with NumPy's
two-pass ``mean``/``var``, and the backward pass is the textbook three-term formula.
They are slow and allocate freely; they define what the fast kernels must compute.
"""
import numpy as np

__all__ = ["group_norm", "group_norm_backward", "activate", "activation_slope"]


def _grouped(x, num_groups):
    """View ``x`` of shape (N, C, *spatial) as (N, G, C/G * prod(spatial))."""
    n, c = x.shape[:2]
    per_group = (c // num_groups) * int(np.prod(x.shape[2:], dtype=np.int64))
    return x.reshape(n, num_groups, per_group)


def _per_channel(v, ndim):
    """Broadcast a (C,) vector against an (N, C, *spatial) array."""
    return np.reshape(v, (1, -1) + (1,) * (ndim - 2))


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5):
    """Group Norm forward in float64.

    ``mean[n, g]`` and ``var[n, g]`` (biased) are taken over the channels of group ``g``
    and every spatial position; ``rstd = 1 / sqrt(var + eps)``;
    ``y = (x - mean) * rstd * weight[c] + bias[c]``.

    Returns
    -------
    y : ndarray, float64, shape of ``x``
    mean, rstd : ndarray, float64, shape (N, num_groups)
    """
    x = np.asarray(x, dtype=np.float64)
    xg = _grouped(x, num_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = xg.mean(axis=2)
        var = ((xg - mean[..., None]) ** 2).mean(axis=2)
        rstd = 1.0 / np.sqrt(var + eps)
        y = ((xg - mean[..., None]) * rstd[..., None]).reshape(x.shape)
    if weight is not None:
        y = y * _per_channel(np.asarray(weight, dtype=np.float64), x.ndim)
    if bias is not None:
        y = y + _per_channel(np.asarray(bias, dtype=np.float64), x.ndim)
    return y, mean, rstd


def group_norm_backward(grad_out, x, mean, rstd, num_groups, weight=None):
    """Group Norm backward in float64: gradients of ``sum(grad_out * y)``.

    With ``xhat = (x - mean) * rstd`` and ``dxhat = grad_out * weight[c]``, and ``<.>`` the
    mean over a group's elements::

        grad_x      = rstd * (dxhat - <dxhat> - xhat * <dxhat * xhat>)
        grad_weight = sum over (n, spatial) of grad_out * xhat
        grad_bias   = sum over (n, spatial) of grad_out

    Returns
    -------
    grad_x : ndarray, float64, shape of ``x``
    grad_weight, grad_bias : ndarray, float64, shape (C,)
    """
    x = np.asarray(x, dtype=np.float64)
    dy = np.asarray(grad_out, dtype=np.float64)
    mean = np.asarray(mean, dtype=np.float64)[..., None]
    rstd = np.asarray(rstd, dtype=np.float64)[..., None]
    xhat = ((_grouped(x, num_groups) - mean) * rstd).reshape(x.shape)
    reduce_axes = (0,) + tuple(range(2, x.ndim))
    grad_weight = (dy * xhat).sum(axis=reduce_axes)
    grad_bias = dy.sum(axis=reduce_axes)
    dxhat = dy if weight is None else dy * _per_channel(np.asarray(weight, np.float64), x.ndim)
    dxhat_g = _grouped(dxhat, num_groups)
    xhat_g = _grouped(xhat, num_groups)
    grad_x = rstd * (dxhat_g - dxhat_g.mean(axis=2, keepdims=True)
                     - xhat_g * (dxhat_g * xhat_g).mean(axis=2, keepdims=True))
    return grad_x.reshape(x.shape), grad_weight, grad_bias


def activate(pre, activation):
    """act(pre) in float64 for the fused activations: None, "relu" (NaN stays NaN) or
    "silu" = pre * sigmoid(pre)."""
    if activation == "relu":
        return np.maximum(pre, 0.0)
    if activation == "silu":
        with np.errstate(over="ignore"):
            return pre / (1.0 + np.exp(-pre))
    return pre


def activation_slope(pre, activation):
    """act'(pre) in float64; relu'(0) = relu'(NaN) = 0, as in torch;
    silu' = s (1 + pre (1 - s)) with s = sigmoid(pre)."""
    if activation == "relu":
        return (pre > 0).astype(np.float64)
    if activation == "silu":
        with np.errstate(over="ignore"):
            s = 1.0 / (1.0 + np.exp(-pre))
        return s * (1.0 + pre * (1.0 - s))
    return np.ones_like(pre)
