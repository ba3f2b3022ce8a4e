"""Block rematerialisation for the UNets: activations recomputed in the backward pass.

`jax.checkpoint` (flax `nn.remat`) marks what to recompute, but the recomputation depends only on
the block's inputs, so XLA's scheduler is free to run it as soon as those exist, early in the
backward pass or even during the forward, or merge it with the forward outright, and the memory
comes back (measured on XLA:CPU: no saving at all). Here each block's VJP is written out: the
forward keeps the block's inputs and parameters; the backward first ties the inputs to the
incoming cotangent (`_after`), so the recomputed forward cannot start before that block's turn in
the backward pass, then runs the block's own VJP, and writes the input cotangents out whole
(`_materialise`) so that no later fusion reaches back into the block's activations. One block's
activations are alive at a time.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

REMAT_MODES = ("none", "blocks")


def check_remat(mode: str) -> str:
    if mode not in REMAT_MODES:
        raise ValueError(f"remat={mode!r}: expected one of {', '.join(REMAT_MODES)}")
    return mode


def call(block: nn.Module, mode: str, *args, **static):
    """`block(*args, **static)`, rematerialised when `mode` is "blocks". `args` are arrays (the
    differentiated inputs); `static` are Python values (flags) fixed at trace time."""
    if check_remat(mode) == "none":
        return block(*args, **static)
    definition = block.clone(parent=None)

    def pure(params, *a):
        return definition.apply({"params": params}, *a, **static)

    def fn(mdl, *a):
        return mdl(*a, **static)

    def fwd(mdl, *a):
        return mdl(*a, **static), (mdl.variables["params"], a)

    def bwd(res, ct):
        params, a = res
        a = _after(a, ct)
        _, vjp = jax.vjp(pure, params, *a)
        grads = vjp(ct)
        return ({"params": grads[0]}, *_materialise(grads[1:]))

    return nn.custom_vjp(fn, forward_fn=fwd, backward_fn=bwd)(block, *args)


def _after(inputs, ct):
    """`inputs` made to depend on the cotangent `ct` (plus zero times one of its elements), so
    XLA can neither merge the recomputation with the forward pass (common-subexpression
    elimination sees different operands; an optimization barrier alone was expanded away on
    XLA:CPU) nor schedule it before the backward pass reaches this block."""
    leaf = jax.tree_util.tree_leaves(ct)[0]
    zero = leaf.reshape(-1)[0] * 0

    def tie(v):
        return v + zero.astype(v.dtype) if jnp.issubdtype(v.dtype, jnp.inexact) else v

    return jax.tree_util.tree_map(tie, inputs)


def _materialise(cts):
    """The block's input cotangents written out whole, at this block's turn.

    Left to itself, XLA:CPU fuses the last elementwise steps of a block's backward pass (the
    GroupNorm/SiLU input gradient) into every consumer of the cotangent, including the encoder
    block that receives the skip connection's part much later; each such fusion recomputes the
    cotangent from the block's recomputed activations, so those stay alive until then, for every
    block at once. A while loop's operands are buffers, so passing the cotangents through one
    makes them one buffer each. The loop runs zero times unless the first element is NaN (then
    once, adding zero times that NaN: the values stay NaN); its trip count is data-dependent, so
    XLA keeps it. (An optimization barrier does not work: XLA:CPU removes barriers before
    fusion; a conditional becomes a select under `vmap`.)"""
    leaf = jax.tree_util.tree_leaves(cts)[0]
    done = ~jnp.isnan(leaf.reshape(-1)[0])

    def body(carry):
        _, c = carry
        return jnp.bool_(True), _after(c, c)

    return lax.while_loop(lambda carry: ~carry[0], body, (done, tuple(cts)))[1]
