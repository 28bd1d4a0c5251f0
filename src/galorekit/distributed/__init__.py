"""GaLore on torch.distributed: torchrun launching, DDP (ordinary and layer-wise GaLore) and
low-rank gradient communication, with bytes counted at the process-group calls."""

from galorekit.distributed.comm import CommCounter
from galorekit.distributed.context import DistContext, init_distributed, inside_torchrun, shutdown
from galorekit.distributed.data_parallel import DataParallelModel, setup_data_parallel
from galorekit.distributed.hooks import (
    HookState,
    allreduce_hook,
    lowrank_allreduce_hook,
    register_comm_hook,
)
from galorekit.distributed.launch import check_nproc, launch, namespace_to_argv
from galorekit.distributed.projection_view import ProjectionLookup, ProjectionView

__all__ = [
    "CommCounter",
    "DataParallelModel",
    "DistContext",
    "HookState",
    "ProjectionLookup",
    "ProjectionView",
    "allreduce_hook",
    "check_nproc",
    "init_distributed",
    "inside_torchrun",
    "launch",
    "lowrank_allreduce_hook",
    "namespace_to_argv",
    "register_comm_hook",
    "setup_data_parallel",
    "shutdown",
]
