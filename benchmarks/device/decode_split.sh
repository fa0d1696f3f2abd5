#!/bin/bash
# Issue 14: the decode step (batch 1/8/32 x context 512/2k, 8B) with the decode attention's flash-decoding
# splits allowed down to MIN_SPLITS tokens each (block_configs.MIN_SPLIT_TOKENS; 128 since session 20, before it
# 512, tuned at >= 2k on an H100), batch 1 at 512 traced per setting (session 18: 8 programs at batch 1 x 512, 12 us a layer
# for 67 MB of KV). Both page-table widths: the narrow one of the roofline table and the model-wide one the engine
# compiles (under which batch 1 splits 16 ways at any floor). ~1.5 min per setting (MIN_SPLITS, default "512 128 64").
cd "$(dirname "$0")/../.." && source benchmarks/device/_env.sh
for ms in ${MIN_SPLITS:-512 128 64}; do
  JAXSGL_MIN_SPLIT_TOKENS=$ms timeout 150 python3 benchmarks/decode_step.py --model .gpu/model8b --load-format dummy --roofline --both-widths \
    --batches ${BATCHES:-1 8 32} --contexts ${CONTEXTS:-512 2048} --iters 30 --profile 1,512 \
    --out $OUT/decode_split${ms}_8b_h200.json 2>&1 | quiet 16
done
python3 benchmarks/compare_decode.py $(for ms in ${MIN_SPLITS:-512 128 64}; do echo $OUT/decode_split${ms}_8b_h200.json; done) \
  --out $OUT/decode_split_compare_8b_h200.json --markdown
