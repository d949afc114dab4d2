"""The GroupNorm layer: parameters and the statistics of the last forward pass."""
import numbers
import operator

import numpy as np

from . import group_norm, group_norm_backward


class GroupNorm:
    """Group Normalization layer, the NumPy counterpart of ``torch.nn.GroupNorm``.

    Parameters
    ----------
    num_groups : int
        G, which must divide ``num_channels``.
    num_channels : int
        C (at least 1), the size of the input's channel axis.
    eps : float, default 1e-5
        Added to the variance.
    affine : bool, default True
        Hold a per-channel ``weight`` (ones) and ``bias`` (zeros). Without it they are None.
    dtype : dtype, default numpy.float32
        dtype of ``weight``, ``bias`` and their gradients: float32, float64, float16 or
        bfloat16 (``ml_dtypes``).
    channel_axis : {1, -1}, default 1
        Channels on axis 1 (N, C, *spatial) or last (N, *spatial, C).
    activation : {None, 'relu', 'silu'}, default None
        Applied after the affine, in the same pass; backward differentiates through it.

    Attributes
    ----------
    weight, bias : ndarray of shape (C,) or None
    grad_weight, grad_bias : ndarray of shape (C,) or None
        Set by :meth:`backward`.

    Notes
    -----
    :meth:`forward` keeps a reference to its input, its ``mean`` and ``rstd``, for
    :meth:`backward`; modifying that input in place in between changes the gradients.

    Examples
    --------
    >>> import numpy as np, gncpu
    >>> layer = gncpu.GroupNorm(2, 4)
    >>> x = np.random.default_rng(0).standard_normal((3, 4, 5)).astype(np.float32)
    >>> y = layer(x)
    >>> grad_x = layer.backward(np.ones_like(y))
    >>> layer.grad_bias
    array([15., 15., 15., 15.], dtype=float32)
    """

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, dtype=np.float32, *,
                 channel_axis=1, activation=None):
        if type(channel_axis) is bool or not isinstance(channel_axis, numbers.Integral):
            raise TypeError(f"channel_axis={channel_axis!r} must be an integer: 1 (channels "
                            "first) or -1 (channels last)")
        if channel_axis not in (1, -1):
            raise ValueError(f"channel_axis={channel_axis!r} is not supported by the layer: "
                             "use 1 (channels first) or -1 (channels last)")
        if num_groups is None:
            raise TypeError("num_groups=None must be an integer (the layer has no group_size)")
        try:
            channels = operator.index(num_channels)
        except TypeError:
            raise TypeError(f"num_channels={num_channels!r} must be an integer") from None
        if isinstance(num_channels, (bool, np.bool_)):
            raise TypeError(f"num_channels={num_channels!r} must be an integer, not a bool")
        if not 1 <= channels <= np.iinfo(np.intp).max:
            raise ValueError(f"num_channels={channels} " + (
                "must be at least 1" if channels < 1 else
                f"is out of range: use 1 to {np.iinfo(np.intp).max}"))
        try:
            dtype = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"dtype={dtype!r} is not a NumPy dtype; use float32, float64, "
                            "float16 or bfloat16") from None
        if dtype.kind != "f" and dtype.name != "bfloat16":
            raise TypeError(f"dtype={dtype.name} is not supported for weight and bias; use "
                            "float32, float64, float16 or bfloat16")
        # Validate the rest now, with the same rules and messages as the functional API.
        probe = (0, num_channels, 1) if channel_axis == 1 else (0, 1, num_channels)
        group_norm(np.zeros(probe), num_groups, eps=eps, channel_axis=channel_axis,
                   activation=activation)
        self.num_groups = num_groups
        self.num_channels = num_channels
        self.eps = eps
        self.affine = affine
        self.channel_axis = channel_axis
        self.activation = activation
        self.weight = np.ones(num_channels, dtype=dtype) if affine else None
        self.bias = np.zeros(num_channels, dtype=dtype) if affine else None
        self.grad_weight = None
        self.grad_bias = None
        self._saved = None

    def __repr__(self):
        extra = "" if self.channel_axis == 1 else f", channel_axis={self.channel_axis}"
        if self.activation is not None:
            extra += f", activation={self.activation!r}"
        return (f"GroupNorm({self.num_groups}, {self.num_channels}, eps={self.eps}, "
                f"affine={self.affine}{extra})")

    def forward(self, x):
        """y = group_norm(x, num_groups, weight, bias, eps, ...); keeps what backward needs."""
        try:
            y, mean, rstd = group_norm(x, self.num_groups, self.weight, self.bias, self.eps,
                                       channel_axis=self.channel_axis,
                                       activation=self.activation, return_stats=True)
        except ValueError as error:
            try:  # the error path only: name x's channel count, not the weight's shape
                shape = np.shape(x)
            except Exception:
                raise error from None
            if len(shape) >= 2 and shape[self.channel_axis] != self.num_channels:
                raise ValueError(f"x has shape {shape}, with C={shape[self.channel_axis]} "
                                 f"channels on axis {self.channel_axis}; this layer has "
                                 f"num_channels={self.num_channels}") from error
            raise
        self._saved = (x, mean, rstd)
        return y

    __call__ = forward

    def backward(self, grad_out):
        """Gradient with respect to the last forward's input; sets grad_weight, grad_bias."""
        if self._saved is None:
            raise RuntimeError("backward() needs a forward() call first")
        x, mean, rstd = self._saved
        grad_x, grad_weight, grad_bias = group_norm_backward(
            grad_out, x, mean, rstd, self.num_groups, self.weight, bias=self.bias,
            activation=self.activation, channel_axis=self.channel_axis)
        if self.affine:
            self.grad_weight = grad_weight.astype(self.weight.dtype, copy=False)
            self.grad_bias = grad_bias.astype(self.bias.dtype, copy=False)
        return grad_x
