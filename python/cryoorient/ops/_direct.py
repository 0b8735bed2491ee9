"""The direct eager path of the ops: their kernels called without the PyTorch dispatcher.

Every op is registered with ``torch.library.custom_op`` (fake tensor and autograd
registrations), which is what torch.compile, export, FakeTensorMode and torch.func see. In
plain eager mode going through the dispatcher costs more than the small kernels (tens of
µs a call: the op and its backward each cross the dispatcher twice and run a generated
autograd.Function), so the public functions call the same implementation through a
classic ``torch.autograd.Function`` instead, whenever nothing is tracing or intercepting
the call (``direct()``). Both paths run the same implementation, setup_context and backward.
"""

from __future__ import annotations

import torch
from torch import Tensor

_dispatch_modes = torch._C._len_torch_dispatch_stack
_function_modes = torch._C._is_torch_function_mode_enabled
_functorch = torch._C._are_functorch_transforms_active
_is_compiling = torch.compiler.is_compiling
_PLAIN = (Tensor, torch.nn.Parameter)


def direct(*tensors: Tensor | None) -> bool:
    """Whether the kernels may be called directly: no torch.compile/export tracing, no dispatch
    or function mode (FakeTensorMode, make_fx, ...), no torch.func transform, and only plain
    tensors (no subclasses) among ``tensors``."""
    if _is_compiling() or _dispatch_modes() or _function_modes() or _functorch():
        return False
    return all(t is None or type(t) in _PLAIN for t in tensors)


def in_direct_backward(ctx) -> bool:
    """In a backward pass of the direct path that builds no graph: call implementations, not ops.

    With ``create_graph=True`` the backward goes through the registered ops, so double backward
    behaves exactly as it does for the dispatched op."""
    return getattr(ctx, "direct", False) and not torch.is_grad_enabled()


def autograd_function(name: str, impl, setup_context, backward) -> type[torch.autograd.Function]:
    """A ``torch.autograd.Function`` running ``impl`` with the op's setup_context and backward;
    call it with ``call``."""

    def forward(ctx, *inputs):
        output = impl(*inputs)
        ctx.direct = True
        setup_context(ctx, inputs, output)
        return output

    members = {"forward": staticmethod(forward), "backward": staticmethod(backward), "impl": staticmethod(impl)}
    return type(name, (torch.autograd.Function,), members)


def call(function: type[torch.autograd.Function], *inputs):
    """``function.apply(*inputs)``, or just its implementation when no input needs a gradient."""
    if torch.is_grad_enabled() and any(isinstance(x, Tensor) and x.requires_grad for x in inputs):
        return function.apply(*inputs)
    return function.impl(*inputs)
