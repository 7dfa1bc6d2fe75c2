"""Torch kernel for ONNX control flow: If (both branches are built at ``to_torch`` time; the
condition picks one per forward pass, and the chosen branch reads outer values by name).

Loop and Scan are not implemented (`UnsupportedOpError` at build time).
Only imported by `spa_nm.train.interp` (lazily, from ``to_torch``).
"""

from __future__ import annotations

from spa_nm.train.registry import NodeSpec, op

__all__: list[str] = []


@op("If", config=(0,), scoped=True)
def _if(node: NodeSpec):
    then_branch = node.subgraph("then_branch")
    else_branch = node.subgraph("else_branch")

    def run(rt, env, cond):
        branch = then_branch if bool(cond.reshape(-1)[0]) else else_branch
        return branch(rt, env)

    return run
