"""Former home of the method layer, now :mod:`galorekit.methods`; this re-export keeps imports
from branches written before the move working. Delete it once nothing imports it."""

from galorekit.methods import (  # noqa: F401  (re-exported)
    GALORE_TORCH_INSTALL,
    MethodConfig,
    MethodSetup,
    adapter_rank,
    default_rank,
    setup_method,
)
from galorekit.names import (  # noqa: F401  (re-exported)
    ALL_METHODS,
    BASELINES,
    DEFAULT_LR,
    METHODS,
    REFERENCE_METHODS,
)
