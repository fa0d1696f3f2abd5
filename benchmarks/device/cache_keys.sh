#!/bin/bash
# Issue 14 (cold start): why a second start misses JAX's persistent cache. Two starts on one cache, each
# dumping its lowered IR (JAX_DUMP_IR_TO); ir_diff.py prints the modules whose IR changed between them. ~2 min.
cd "$(dirname "$0")/../.." && source benchmarks/device/_env.sh
C=/tmp/jc_keys; rm -rf $C
M=${1:-smoke}
for i in 1 2; do
  if [ "$M" = smoke ]; then A="--smoke"; else
    A="--model-path .gpu/model8b --load-format dummy --engine-args '--max-running-requests 64 --chunked-prefill-size 512 --seq-buckets 64'"; fi
  JAX_DUMP_IR_TO=/tmp/ir$i eval timeout 200 python3 benchmarks/cold_start.py $A --starts 1 --cache $C \
    --out $OUT/cache_keys_${M}_$i.json 2>&1 | quiet 2
  ls $C/xla > $OUT/cache_ls_$i.txt
done
python3 benchmarks/device/ir_diff.py /tmp/ir1 /tmp/ir2 2>&1 | tail -60
diff $OUT/cache_ls_1.txt $OUT/cache_ls_2.txt | head -20
