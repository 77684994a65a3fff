#!/usr/bin/env bash
# The GPU checks of bench/README.md in two device calls, prepared here so that a short lease
# goes to measuring, not to setting up.
#
#   bash bench/device_check.sh prepare          # here, once: fills .gpu/ (git-ignored)
#   bash bench/device_check.sh run bench        # device call 1 (carry [".gpu"]): about 5 min
#   bash bench/device_check.sh run movielens    # device call 2, on the still-warm machine
#   SMOKE=1 bash bench/device_check.sh run all  # here, on the CPU: the same steps at toy sizes
#                                               # (PYTHON= picks the interpreter; .venv by default)
#
# Two calls, because one device command may run 10 minutes at most.
#
# The device image has torch, transformers, pandas and pyarrow but no package index and not
# this project's other dependencies, so `prepare` saves what the steps need into .gpu/: the
# shipped tokenizer (the random 7B/0.5B shapes need only a tokenizer) and a faiss wheel for
# the image's Python 3.12 (training imports the retrieval metrics). The shipped SmolLM2 wheel
# (98 MB) is larger than one call can carry (64 MiB), so the real-model extraction and the
# MovieLens metrics on the GPU are not in this call; bench/README.md says so.
#
# Every step runs under its own time limit and a failed step does not stop the others: what
# failed is itself a finding. Results land in $OUT (the device tool brings back at most 8
# files): device_check.log and one JSON per benchmark.
set -uo pipefail
cd "$(dirname "$0")/.."
GPU_DIR=.gpu

prepare() {
    local py=.venv/bin/python
    mkdir -p "$GPU_DIR/wheels"
    grep -qx "/$GPU_DIR/" .git/info/exclude 2>/dev/null || echo "/$GPU_DIR/" >> .git/info/exclude
    "$py" -c "from learn_features.cex.model_loading import load_tokenizer, resolve_model; \
load_tokenizer(resolve_model('shipped:smollm2')).save_pretrained('$GPU_DIR/tokenizer')"
    "$py" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        -d "$GPU_DIR/wheels" "$("$py" -m pip freeze | grep -i '^faiss-cpu==')"
    du -sh "$GPU_DIR"
}

# step NAME SECONDS COMMAND...: run one check, log it, keep going whatever it returns.
step() {
    local name=$1 limit=$2 started rc
    shift 2
    echo "== $name: $*" | tee -a "$LOG"
    started=$(date +%s)
    timeout "$limit" "$@" >> "$LOG" 2>&1
    rc=$?
    echo "== $name: exit $rc after $(($(date +%s) - started)) s" | tee -a "$LOG"
}

# The throughput benchmarks: naive against the project's path, in one process each.
bench_steps() {
    if [ -n "${SMOKE:-}" ]; then
        step extract 300 "$py" bench/extract.py --model tiny --items 64 --threads 1 --json "$OUT/extract.json"
        step train-bench 300 "$py" bench/train.py --preset tiny --json "$OUT/train.json"
        return
    fi
    local tok=(--tokenizer "$GPU_DIR/tokenizer")
    step extract-7b 240 "$py" bench/extract.py --model 7b-shape "${tok[@]}" --items 9742 --json "$OUT/extract-7b.json"
    step extract-05b 120 "$py" bench/extract.py --model 0.5b-shape "${tok[@]}" --items 9742 --json "$OUT/extract-05b.json"
    step train-paper 180 "$py" bench/train.py --json "$OUT/train-paper.json"
    step train-paper-compile 240 "$py" bench/train.py --compile --json "$OUT/train-paper-compile.json"
}

# MovieLens through the project's own commands: bf16 autocast, fused AdamW and the side-stream
# prefetch in real training, then DDP. id_baseline reads no LLM content, so it runs without the
# shipped SmolLM2. The CPU figures to compare with come from the same two commands with
# train.device=cpu (README's MovieLens seed table has id_baseline's, from an older commit).
movielens_steps() {
    local config=training/configs/movielens-benchmark.toml run=runs/device-check-movielens
    local seeds=3 epochs=() ddp_epochs=2 device=cuda
    local ranks
    ranks=$("$py" -c "import torch; print(max(torch.cuda.device_count(), 1))")
    if [ -n "${SMOKE:-}" ]; then  # toy sizes on the CPU, gloo for the process group
        seeds=1 epochs=(--set train.epochs=1) ddp_epochs=1 device=cpu ranks=2
    fi
    local common=(--set 'split.protocols=["temporal"]' --set train.device="$device" --set train.bf16=true --set train.fused=true)
    local eval=(--set 'eval.methods=["id_baseline","item_knn","popularity"]' --set eval.primary_method=id_baseline --set 'eval.references=["id_baseline"]')
    step movielens-train 300 "$py" -m learn_features.cli train -c "$config" --run-dir "$run" --method id_baseline --seeds "$seeds" -q \
        "${common[@]}" "${epochs[@]}" --set train.workers=1
    step movielens-evaluate 120 "$py" -m learn_features.cli evaluate -c "$config" --run-dir "$run" --seeds "$seeds" -q \
        "${common[@]}" "${epochs[@]}" "${eval[@]}"
    cp "$run/metrics.json" "$OUT/movielens-ids-metrics.json"
    # DDP over every GPU (NCCL; gloo in the smoke). With one GPU, NCCL cannot put two ranks on
    # one device, so a 2-process run there shows what a user gets when trying.
    local ddp=(-m training.distributed --config "$config" --method id_baseline --quiet "${common[@]}" --set train.epochs="$ddp_epochs")
    step "ddp-$ranks-ranks" 180 "$py" -m torch.distributed.run --standalone --nproc-per-node "$ranks" "${ddp[@]}" --run-dir "$run-ddp"
    if [ "$ranks" = 1 ]; then
        step ddp-2-ranks-on-one-gpu 120 "$py" -m torch.distributed.run --standalone --nproc-per-node 2 "${ddp[@]}" --run-dir "$run-ddp2"
    fi
}

run() {
    local part=$1
    case "$part" in bench | movielens | all) ;; *) echo "usage: $0 run bench|movielens|all" >&2; exit 2 ;; esac
    OUT=${OUT:-runs/device-check}
    mkdir -p "$OUT"
    LOG=$OUT/device_check-$part.log
    : > "$LOG"
    py=python3
    if [ -n "${SMOKE:-}" ]; then
        py=${PYTHON:-.venv/bin/python}
    else
        python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$GPU_DIR"/wheels/*.whl >> "$LOG" 2>&1
        export PYTHONPATH=/tmp/site
    fi
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
    step environment 60 "$py" -c "import sys, torch; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda); \
print([torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])"
    [ "$part" = movielens ] || bench_steps
    [ "$part" = bench ] || movielens_steps
    return 0
}

case "${1:-}" in
    prepare) prepare ;;
    run) run "${2:-all}" ;;
    *) echo "usage: $0 prepare | run bench|movielens|all" >&2; exit 2 ;;
esac
