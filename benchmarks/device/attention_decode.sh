#!/bin/bash
# Issue 14: the decode attention kernel alone at context 512 (batch 1-256) and 2k, each case tuned over block
# configs (rows 16; block_k 64 / 128; 1, 2, 4, 16 splits; warps and stages): session 18's step profile had
# batch 64 x 512 at 71% of the copy bandwidth (4 KV blocks a program, one program per SM at block_k 128) and
# batch 1 at 12 us a layer (8 programs). ~3 min. CASES overrides the cases.
cd "$(dirname "$0")/../.." && source benchmarks/device/_env.sh
timeout 400 python3 benchmarks/attention.py --only decode --tune \
  --decode-cases ${CASES:-1,512 8,512 32,512 64,512 128,512 256,512 64,2048} \
  --out $OUT/attention_decode_tune_h200.json 2>&1 | quiet 30
