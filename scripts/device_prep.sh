#!/usr/bin/env bash
# Prepare what a GPU run on the `device` machine needs (it has jax, torch, transformers and no internet):
#   .whl/         cp312 manylinux wheels of jaxsgl's engine dependencies the image lacks
#   .whl_server/  the server's wheels (fastapi and its dependencies, uvicorn, prometheus-client, httpx)
#   .whl_tf/      transformers 5.18 (the image's 5.17 imports torch in every tokenizer load): carry it for timed starts
#   .gpu/model8b  the Llama-3.1-8B config (benchmarks/configs) + the default model's tokenizer (load_format=dummy)
#   .gpu/smol     SmolLM2-135M's config + tokenizer (the default model's shapes, dummy weights)
#   .gpu/data     a copy of ../shared/data (the device sees only the repository)
# All four are git-ignored: pass them in the device call's `carry`. Then run a script of benchmarks/device/.
# Needs .venv (scripts/setup.sh) for the default model's files. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || printf '/.whl/\n/.whl_server/\n/.gpu/\n' >> .git/info/exclude
grep -qx '/.whl_tf/' .git/info/exclude 2>/dev/null || printf '/.whl_tf/\n' >> .git/info/exclude
dl=(python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_31_x86_64)
mkdir -p .whl .whl_server .whl_tf .gpu
[ -n "$(ls .whl)" ] || "${dl[@]}" -d .whl outlines-core==0.2.14 llguidance==1.9.1 jsonschema \
    jsonschema-specifications referencing rpds-py attrs gguf
# the image's transformers 5.17 imports torch in every tokenizer load (module-level GGUF utilities; lazy since
# 5.18): seconds of each engine start that a current install does not pay. 5.18 needs nothing the image lacks.
# In .whl_tf/ (12 MB), carried where a start is timed (cold_start.sh): the working tree's 64 MiB is near.
[ -n "$(ls .whl_tf 2>/dev/null)" ] || "${dl[@]}" -d .whl_tf transformers==5.18.0
[ -n "$(ls .whl_server)" ] || "${dl[@]}" -d .whl_server fastapi starlette uvicorn pydantic pydantic-core \
    annotated-types annotated-doc typing-inspection typing-extensions anyio sniffio h11 click prometheus-client \
    httpx httpcore idna certifi opentelemetry-api importlib-metadata zipp
src=$(.venv/bin/python -c "from jaxsgl.model.resolve import resolve_model_dir; print(resolve_model_dir(None))")
for d in model8b smol; do
  mkdir -p .gpu/$d
  cp "$src"/tokenizer.json "$src"/tokenizer_config.json .gpu/$d/
done
cp benchmarks/configs/llama-3.1-8b/config.json .gpu/model8b/
cp "$src"/config.json .gpu/smol/
[ -d .gpu/data ] || cp -r ../shared/data .gpu/data
du -sh .whl .whl_server .whl_tf .gpu
