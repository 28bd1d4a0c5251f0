#!/bin/bash
# seed 1 of the per-group rows whose verdict hangs on a 1-2% gap (LoRA vs GaLore) and of AdamW
cd /work/wt-fair
common="--model llama_9m --vocab-size 4096 --seq-len 128 --batch-size 8 --max-steps 400 --val-sequences 128 --eval-every 50 --save-every 0 --seed 1 --no-progress --no-tensorboard --no-plot --overwrite"
run() { PYTHONPATH=/work/wt-fair/src OMP_NUM_THREADS=1 python3 -m galorekit pretrain $common --output-dir /tmp/fair/seeds/$1 "${@:2}" > /tmp/fair/seeds/$1.log 2>&1; }
run galore --method galore_adamw --rank 32 --update-proj-gap 50 --lr 0.01 --lr-other-ratio 4 &
run lora --method lora --rank 32 --lr 0.0025 --lr-other-ratio 16 &
run adamw --method adamw --lr 0.0025 --lr-other-ratio 16 &
wait
