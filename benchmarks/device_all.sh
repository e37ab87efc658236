#!/usr/bin/env bash
# The GPU benchmarks behind docs/performance.md, one group per invocation, each within a
# 10-minute wall limit. From the repository root:
#
#   bash benchmarks/device_all.sh step OUTDIR   # step_bench.py, both LoRA paths side by side (fast, peft);
#                                               # then the fast path once more with the allocator's default
#                                               # segments (step_bench_default_segments.json)
#   bash benchmarks/device_all.sh peer OUTDIR   # trl_peer.py: our step (the shipped settings, and the same with a
#                                               # prompt copy per sample) beside TRL 1.16 GRPOTrainer (transformers
#                                               # generate, then continuous batching), one process; installs the
#                                               # wheels of ${WHEELS:-.whl2} into /tmp/site first
#   bash benchmarks/device_all.sh ab OUTDIR     # the shipped settings' A/Bs: pg_profile.py --ab sft_packing (SFT
#                                               # micro-batches padded and packed), then step_bench.py --compile
#                                               # (every stage; optimizer_ab: the trainer's bookkeeping and the former)
#   bash benchmarks/device_all.sh share OUTDIR  # the recompute's GPU tests (tests/test_recompute.py), then
#                                               # pg_profile.py --ab shared_prompts (a prompt copy per sample
#                                               # against one shared by its samples)
#   bash benchmarks/device_all.sh overlap OUTDIR  # host_overhead.py (the module walks at the start of a pass and the
#                                               # scoring's host work, on this host's CPU; the logging per step in
#                                               # ${BENCH_WORK:-/root/bench}), the recompute's GPU tests, then pg_profile.py --ab
#                                               # overlap_scoring (the scoring on the forward's stream against a second
#                                               # stream); each profile names what the host was in during the GPU's idle gaps
#   bash benchmarks/device_all.sh blas OUTDIR   # torch's matmuls through cuBLAS (its default) against cuBLASLt:
#                                               # decode_profile.py (each projection's matmul at the decode step's
#                                               # rows, and the whole rollouts recaptured: --variants cublaslt), then
#                                               # pg_profile.py --ab blas (the policy-gradient and SFT passes)
#   bash benchmarks/device_all.sh run OUTDIR    # moderate_run.py: the whole moderate run through `polychromic
#                                               # train` under a 76 GiB cap (model folder in ${BENCH_WORK:-/root/bench})
#   bash benchmarks/device_all.sh cache OUTDIR  # the compile caches: a short run of the moderate config (160
#                                               # examples, 20 steps) twice, in two processes sharing one inductor
#                                               # and Triton cache folder, emptied before the first (cold/, warm/)
#   bash benchmarks/device_all.sh eval OUTDIR   # eval_bench.py: one model's whole evaluation generation (500 prompts x
#                                               # 10 samples + greedy, in evaluate's order), cold and warm, the shipped
#                                               # chunk rule beside the former one
#
# Each writes its JSON and <mode>.log under OUTDIR. A group cut by its time limit keeps what it
# wrote; a cut moderate run leaves its per-step metrics as moderate_metrics_partial.jsonl.
# BENCH_SMOKE=1 runs the same commands on the tiny shape on a CPU (seconds; the timings mean
# nothing); WHEELS=none skips the wheel install where trl is already installed.
set -uo pipefail

mode=${1:-}
out=${2:-}
if [[ -z $out || ! $mode =~ ^(step|peer|ab|share|overlap|blas|run|cache|eval)$ ]]; then
  echo "usage: bash benchmarks/device_all.sh step|peer|ab|share|overlap|blas|run|cache|eval OUTDIR" >&2
  exit 2
fi
cd "$(dirname "$0")/.."
mkdir -p "$out"
log="$out/$mode.log"
export PYTHONPATH=src HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

versions() {
  nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv,noheader 2>&1 | head -4
  python3 -c "import sys, torch, transformers, peft, accelerate; print('python', sys.version.split()[0], 'torch', torch.__version__,
'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__)"
}

# run SECONDS CMD...: the command under a time limit, its output appended to the log; its exit status
run() {
  local limit=$1
  shift
  echo "+ $*" | tee -a "$log"
  timeout --kill-after=15 "$limit" "$@" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  echo "exit status $rc" | tee -a "$log"
  return "$rc"
}

if [[ ${BENCH_SMOKE:-0} == 1 ]]; then
  step_args=(--shape tiny --repeats 1) skip_more=,eval peer_args=(--shape tiny --repeats 1 --trl-steps 2 --variants shipped,shipped_per_sample)
  run_args=(--shape tiny --examples 96 --device cpu) cache_args=(--shape tiny --examples 96 --device cpu)
  eval_args=(--shape tiny --prompts 24)
else
  step_args=(--repeats 3) skip_more= peer_args=(--repeats 4 --trl-steps 3 --variants shipped,shipped_per_sample) run_args=(--memory-gb 76) cache_args=(--examples 160 --memory-gb 76)
  eval_args=()
fi

versions 2>&1 | tee "$log"
status=0
case $mode in
  step)
    run 380 python3 benchmarks/step_bench.py "${step_args[@]}" --skip old_sft$skip_more --lora fast,peft --out "$out" || status=$?
    run 190 python3 benchmarks/step_bench.py "${step_args[@]}" --skip old_sft,old_pg,sdpa,eval --lora fast \
      --no-expandable-segments --name step_bench_default_segments --out "$out" || status=$?
    ;;
  ab)
    run 250 python3 benchmarks/pg_profile.py "${step_args[@]}" --skip-eager --no-profile --ab sft_packing \
      --out "$out" || status=$?
    run 320 python3 benchmarks/step_bench.py "${step_args[@]}" --skip old_sft,old_pg,sdpa$skip_more --lora fast --compile \
      --name step_bench_shipped --out "$out" || status=$?
    ;;
  share)
    run 200 python3 -m pytest -q -p no:cacheprovider tests/test_recompute.py -k on_a_gpu || status=$?
    run 330 python3 benchmarks/pg_profile.py "${step_args[@]}" --skip-eager --ab shared_prompts --out "$out" || status=$?
    ;;
  overlap)
    run 60 python3 benchmarks/host_overhead.py --out "$out" --work "${BENCH_WORK:-/root/bench}" || status=$?
    run 200 python3 -m pytest -q -p no:cacheprovider tests/test_recompute.py -k on_a_gpu || status=$?
    run 330 python3 benchmarks/pg_profile.py "${step_args[@]}" --skip-eager --ab overlap_scoring --out "$out" || status=$?
    ;;
  blas)
    if [[ ${BENCH_SMOKE:-0} == 1 ]]; then
      run 120 python3 benchmarks/decode_profile.py "${step_args[@]}" --variants none --out "$out" || status=$?
      echo "BENCH_SMOKE: pg_profile.py --ab blas needs a CUDA device; not run on this CPU" | tee -a "$log"
    else
      run 240 python3 benchmarks/decode_profile.py "${step_args[@]}" --variants cublaslt --out "$out" || status=$?
      run 330 python3 benchmarks/pg_profile.py "${step_args[@]}" --skip-eager --ab blas --out "$out" || status=$?
    fi
    ;;
  peer)
    wheels=${WHEELS:-.whl2}
    if [[ $wheels != none ]]; then
      python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$wheels"/*.whl 2>&1 | tee -a "$log"
      export PYTHONPATH=/tmp/site:src
    fi
    python3 -c "import trl, datasets, pyarrow, huggingface_hub, fsspec; print('trl', trl.__version__, 'datasets', datasets.__version__,
'pyarrow', pyarrow.__version__, 'huggingface_hub', huggingface_hub.__version__, 'fsspec', fsspec.__version__)" 2>&1 | tee -a "$log"
    run 570 python3 benchmarks/trl_peer.py "${peer_args[@]}" --lora fast --out "$out" || status=$?
    ;;
  run)
    work=${BENCH_WORK:-/root/bench}
    run 575 python3 benchmarks/moderate_run.py "${run_args[@]}" --work "$work" --out "$out" || status=$?
    if [[ ! -f $out/moderate_run.json ]]; then
      for m in "$work"/runs/*/seed_*/metrics.jsonl; do
        [[ -f $m ]] && cp "$m" "$out/moderate_metrics_partial.jsonl"
      done
    fi
    ;;
  cache)
    work=${BENCH_WORK:-/root/bench}
    export TORCHINDUCTOR_CACHE_DIR=$work/compile_cache/inductor TRITON_CACHE_DIR=$work/compile_cache/triton
    rm -rf "$work/compile_cache"
    for phase in cold warm; do
      run 280 python3 benchmarks/moderate_run.py "${cache_args[@]}" --work "$work" --out "$out/$phase" || status=$?
    done
    du -sh "$work/compile_cache"/* 2>&1 | tee -a "$log"
    ;;
  eval)
    run 560 python3 benchmarks/eval_bench.py ${eval_args[@]+"${eval_args[@]}"} --out "$out" || status=$?
    ;;
esac
exit "$status"
