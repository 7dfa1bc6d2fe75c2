"""spa_nm: structural channel pruning and N:M sparsity for any ONNX model.

``import spa_nm`` never imports torch or onnxruntime.
"""

from spa_nm.api import PruneResult, analyze, inspect, load, prune, save, sparsify
from spa_nm.errors import ConfigError, InputError, SpaNmError

__all__ = [
    "ConfigError",
    "InputError",
    "PruneResult",
    "SpaNmError",
    "analyze",
    "inspect",
    "load",
    "prune",
    "save",
    "sparsify",
]
__version__ = "0.1.0"
