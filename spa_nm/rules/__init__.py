"""All op knowledge. Each family module registers its rules when imported here."""

from spa_nm.rules import (  # noqa: F401  (registration side effects)
    attention,
    concat_split,
    contrib,
    contrib_attention,
    conv,
    elementwise,
    indexing,
    linear,
    misc,
    norm,
    pool,
    quant,
    recurrent,
    shape,
)
from spa_nm.rules._context import RuleContext
from spa_nm.rules._registry import RuleEntry, lookup, macs_of, nm_axis_of, rule, supported_ops

__all__ = ["RuleContext", "RuleEntry", "lookup", "macs_of", "nm_axis_of", "rule", "supported_ops"]
