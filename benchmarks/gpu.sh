#!/usr/bin/env bash
# Every GPU measurement the README and docs/benchmarks.md report, in one run of about ten minutes on one
# H100/H200: the CUDA tests, where a call's time goes, selection speed (with CUDA graphs), and the
# end-to-end cost at the real 7B sizes (default cache, then a static cache with compiled decoding).
#
#   bash benchmarks/gpu.sh                          # every step; results under benchmarks/results/gpu
#   bash benchmarks/gpu.sh tests profile selection  # only these steps (e.g. to split the run in two)
#   OUT=/some/dir bash benchmarks/gpu.sh            # results elsewhere
#
# Steps, with their time limits: tests (90 s), profile (60 s), selection (90 s), e2e (280 s), static (200 s).
#
# Needs tokenprune installed with its test extras and the example plugin (the README's test set-up, with
# a CUDA build of torch) and transformers >= 5.18. Each step has a time limit, so one that hangs cannot
# eat the others' time; a step that fails says so and the next one runs.
set -u
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
start=$(date +%s)
step() { echo "[t+$(($(date +%s) - start))s] $*"; }
steps=" ${*:-tests profile selection e2e static} "
for name in $steps; do
    case $name in tests | profile | selection | e2e | static) ;; *) echo "unknown step '$name'; expected tests, profile, selection, e2e or static" >&2; exit 2 ;; esac
done
run() { [[ $steps == *" $1 "* ]]; }

python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, \
torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO CUDA DEVICE')"

if run tests; then
    timeout 90 python -m pytest -q -p no:cacheprovider -k cuda tests/test_triton_fill.py tests/test_conformance.py \
        tests/test_plugin_example.py tests/test_host_cost.py tests/test_graphs.py tests/test_integration_llava.py \
        tests/test_integration_qwen2_5_vl.py \
        >"$OUT/pytest.txt" 2>&1
    step "CUDA tests, exit $?"
    grep -E "passed|failed|^FAILED" "$OUT/pytest.txt"
fi

if run profile; then
    timeout 60 python benchmarks/profile_cuda.py --repeats 20 >"$OUT/profile.txt" 2>&1
    step "profile, exit $?"
    grep -E "^==|Triton" "$OUT/profile.txt"
fi

if run selection; then
    timeout 90 python -m benchmarks.selection --device cuda --methods zspa,divprune --graphed --n 576,2880,8192 \
        --d 1024,4096 --batch 1,8 --budget 0.5 --repeats 10 --table summary --json "$OUT/selection-cuda.json" \
        --quiet >"$OUT/selection.txt" 2>&1
    step "selection, exit $?"
    grep -E "cuda zspa|speedup|ERROR" "$OUT/selection.txt"
fi

if run e2e; then
    timeout 280 python benchmarks/e2e.py --size real --device cuda --methods zspa,zspa+graph --keep 1.0,0.5,0.1 \
        --repeats 4 --warmup 1 --json "$OUT/e2e-cuda-real.json" >"$OUT/e2e.txt" 2>&1
    step "e2e, exit $?"
    grep -v Warning "$OUT/e2e.txt" | tail -20
fi

if run static; then
    # each arm compiles its decoding step for each cache length (tens of seconds at 7B): one keep ratio
    timeout 200 python benchmarks/e2e.py --size real --device cuda --families llava --methods zspa+graph \
        --keep 0.1 --repeats 4 --warmup 1 --cache static --json "$OUT/e2e-cuda-real-static.json" \
        >"$OUT/e2e-static.txt" 2>&1
    step "e2e with a static cache, exit $?"
    grep -v Warning "$OUT/e2e-static.txt" | tail -8
fi
