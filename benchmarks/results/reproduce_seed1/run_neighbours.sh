#!/bin/bash
# seed 1 of the per-group rows re-tuned by the neighbour search (GaLore d/4 and galore-torch at
# matrix LR 0.02, other params 4x), plus seed 0 of GaLore through the same command as a control
# (it must equal the reproduce run's 73.50). Run from the repository root.
set -e
out=${OUT:-/tmp/seeds2}
mkdir -p "$out"
common="--model llama_9m --vocab-size 4096 --seq-len 128 --batch-size 8 --max-steps 400 --val-sequences 128 --eval-every 50 --save-every 0 --no-progress --no-tensorboard --no-plot --overwrite"
run() { OMP_NUM_THREADS=1 python3 -m galorekit pretrain $common --output-dir "$out/$1" "${@:2}" > "$out/$1.log" 2>&1; }
galore="--rank 32 --update-proj-gap 50 --lr 0.02 --lr-other-ratio 4"
run galore_lr0.02_seed0 --method galore_adamw $galore --seed 0 &
run galore_lr0.02_seed1 --method galore_adamw $galore --seed 1 &
wait
run galore_torch_lr0.02_seed1 --method galore_torch_adamw $galore --seed 1
