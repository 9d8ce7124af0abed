"""Model size: parameter counts, and FLOPs counted from the program itself (every matrix product
and convolution).

A multiply-add counts as 2 FLOPs; elementwise work (normalisation, activations) is not
counted, the usual convention for model FLOP utilisation (convolutions, dense layers and
attention products).
"""
from __future__ import annotations

import math

import jax
from jax.extend import core as jax_core


def _dot_general_flops(eqn) -> int:
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval.shape
    contracted = math.prod(lhs[d] for d in lhs_contract)
    return 2 * math.prod(eqn.outvars[0].aval.shape) * contracted


def _conv_flops(eqn) -> int:
    rhs = eqn.invars[1].aval.shape
    # rhs_spec = (out feature dim, in feature dim (per group), spatial dims...)
    spec = eqn.params["dimension_numbers"].rhs_spec
    return 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(rhs[d] for d in spec[1:])


def jaxpr_flops(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            total += _dot_general_flops(eqn)
        elif eqn.primitive.name == "conv_general_dilated":
            total += _conv_flops(eqn)
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else (param,):
                if isinstance(sub, jax_core.ClosedJaxpr):
                    total += jaxpr_flops(sub.jaxpr)
                elif isinstance(sub, jax_core.Jaxpr):
                    total += jaxpr_flops(sub)
    return total


def count_flops(fn, *args) -> int:
    """FLOPs of matrix products and convolutions in `fn(*args)` (args may be abstract)."""
    return jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr)


def count_params(params) -> int:
    """The number of parameters in a pytree of arrays (or of abstract arrays)."""
    return sum(int(p.size) for p in jax.tree.leaves(params))
