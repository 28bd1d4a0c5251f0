"""Which DeepSpeed configurations can run a galorekit GaLore optimizer as a client optimizer.

For each configuration (ZeRO stage 0-3, fp32 / bf16), one process (world size 1, gloo) builds a
tiny MLP, hands ``GaLoreAdamW`` (a rank-4 GaLore group on the two weight matrices) to
``deepspeed.initialize`` and runs 3 steps. Recorded: whether it ran, the shapes of the tensors the
optimizer's GaLore group holds after DeepSpeed wrapped it (GaLore needs the 2-D weight matrices),
whether a projector was made (``proj_left``/``proj_right`` in the state), whether GaLore was
applied (the group still holds the two weight matrices, and each got a projector), and the error
if any.

    OMP_NUM_THREADS=1 python benchmarks/deepspeed_zero.py --out benchmarks/results/deepspeed_zero.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import socket
import traceback


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one(stage: int, dtype: str, port: int, queue) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1"
    )
    result: dict = {"stage": stage, "dtype": dtype}
    try:
        import deepspeed
        import torch

        from galorekit import GaLoreAdamW

        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 8)
        )
        groups = [
            {"params": [model[0].bias, model[2].bias]},
            {"params": [model[0].weight, model[2].weight], "rank": 4, "update_proj_gap": 2},
        ]
        config = {
            "train_micro_batch_size_per_gpu": 4,
            "gradient_accumulation_steps": 1,
            "zero_optimization": {"stage": stage},
            "zero_allow_untested_optimizer": True,
            "bf16": {"enabled": dtype == "bf16"},
            "fp16": {"enabled": dtype == "fp16"},
        }
        deepspeed.init_distributed(dist_backend="gloo")
        engine, optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=GaLoreAdamW(groups, lr=1e-2), config=config
        )
        inner = optimizer
        while not isinstance(inner, GaLoreAdamW) and hasattr(inner, "optimizer"):
            inner = inner.optimizer
        galore = [g for g in inner.param_groups if "rank" in g]
        result["optimizer_wrapper"] = type(optimizer).__name__
        result["galore_group_shapes"] = [[list(p.shape) for p in g["params"]] for g in galore]
        x = torch.randn(4, 16).to(engine.device)
        for _ in range(3):
            loss = engine(x.to(next(engine.parameters()).dtype)).float().pow(2).mean()
            engine.backward(loss)
            engine.step()
        projected = [
            any(k in inner.state[p] for k in ("proj_left", "proj_right"))
            for g in galore
            for p in g["params"]
        ]
        # GaLore is applied only when its group still holds the model's weight matrices: a
        # flattened 1-D partition is "projected" as a meaningless n×1 matrix
        shapes_kept = result["galore_group_shapes"] == [[[32, 16], [8, 32]]]
        result.update(ran=True, projected=projected, galore_applied=shapes_kept and all(projected))
    except Exception as err:  # the measurement records every failure as it happened
        result.update(ran=False, error=f"{type(err).__name__}: {err}"[:400])
        result["trace_tail"] = traceback.format_exc().splitlines()[-3:]
    queue.put(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/deepspeed_zero.json")
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    rows = []
    for stage in (0, 1, 2, 3):
        for dtype in ("fp32", "bf16", "fp16"):
            queue = ctx.Queue()
            proc = ctx.Process(target=_one, args=(stage, dtype, _free_port(), queue))
            proc.start()
            proc.join(300)
            rows.append(
                queue.get()
                if not queue.empty()
                else {
                    "stage": stage,
                    "dtype": dtype,
                    "ran": False,
                    "error": f"exit code {proc.exitcode}",
                }
            )
            print(json.dumps(rows[-1]))
    import deepspeed
    import torch

    meta = {
        "command": "OMP_NUM_THREADS=1 python benchmarks/deepspeed_zero.py",
        "deepspeed": deepspeed.__version__,
        "torch": torch.__version__,
        "machine": f"{platform.machine()} CPU, gloo, world size 1",
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
