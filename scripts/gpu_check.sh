#!/usr/bin/env bash
# GPU check for a machine with a GPU (run from the repo root with tpnet importable, e.g.
# PYTHONPATH=src). First the issue #15 figures: augment=gpu on the device (no host sync, reproducible),
# loader-fed training efficiency of experiment=gpu_full at its batch size with the machine's workers (CPU
# augmentation and augment=gpu), and tpnet-infer end-to-end vs model-only at the same batch size with and
# without overlays; then the CUDA path end to end: training with bf16 AMP + channels_last and augment=gpu,
# export (TorchScript, .pt2), tpnet-infer on the GPU, fp16 + EMA, torch.compile (slowest to start, so last:
# a lease that runs out loses the least). Writes a log per step and the benchmark JSON lines to
# ${OUT:-/tmp/gpu_check}. STEPS="name name ..." runs a subset (default: all); DRY_RUN=1 prints each step's
# command instead (the tests check those commands on CPU); TRAIN_WORKERS=8,15 sets the loader-fed training
# figures' worker counts (default 8 and every core but one). Exit code: failed steps.
set -u
OUT="${OUT:-/tmp/gpu_check}"
WORK="${WORK:-/tmp/gpu_check_work}"
PY="${PYTHON:-python3}"
STEPS="${STEPS:-all}"
mkdir -p "$OUT" "$WORK"
fails=0
step() {  # step NAME command...
  local name=$1; shift
  case " $STEPS " in *" all "*|*" $name "*) ;; *) return 0 ;; esac
  if [ "${DRY_RUN:-0}" = 1 ]; then echo "STEP $name: $*"; return 0; fi
  local t0=$SECONDS
  if "$@" >"$OUT/$name.log" 2>&1; then echo "PASS $name ($((SECONDS - t0)) s)"; else echo "FAIL $name ($((SECONDS - t0)) s)"; tail -20 "$OUT/$name.log"; fails=$((fails + 1)); fi
}
bench() {  # bench NAME benchmark-args...: JSON lines to $OUT/NAME.jsonl, the table to $OUT/NAME.log
  local name=$1; shift
  "$PY" scripts/benchmark.py --device cuda --workdir "$WORK/$name" "$@" >"$OUT/$name.jsonl"
}
CORES=$(nproc)
WORKERS=$((CORES > 2 ? CORES - 1 : 1))   # the machine's workers: every core but the one the training loop uses
TINY="data.synthetic.subjects=8 data.synthetic.frames_per_subject=4 data.synthetic.cache_dir=$WORK/cache data.cache.dir=$WORK/preprocessed logger.enabled=false evaluation.n_boot=50 data.num_workers=4"
[ "${DRY_RUN:-0}" = 1 ] || "$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0), 'bf16', torch.cuda.is_bf16_supported())"
# ---- issue #15: the GPU never waits -----------------------------------------------------------------------------
step augment_gpu_no_sync "$PY" scripts/gpu_augment_check.py
# experiment=gpu_full's recipe (U-Net width 32 depth 5, bf16, channels_last) at its batch size 32, 256 px patches.
GPU_FULL="--amp --channels-last --batch-size 32 --size 256 --override experiment=gpu_full --train-workers ${TRAIN_WORKERS:-8,$WORKERS}"
step bench_train_cpu_augment bench bench_train_cpu_augment $GPU_FULL --sections train
step bench_train_gpu_augment bench bench_train_gpu_augment $GPU_FULL --sections train --override augment=gpu
# tpnet-infer at batch 32: model-only (infer_model_frames_per_s) and end-to-end with / without overlays
# (infer_e2e_frames_per_s scaling lines, infer_host_ms_per_frame).
step bench_infer bench bench_infer --sections infer --batch-size 32
# ---- the CUDA path end to end (passed on an H100, 2026-11-28) ----------------------------------------------
step train_bf16_channels_last "$PY" -m tpnet.training.cli trainer=gpu trainer.max_epochs=2 $TINY hydra.run.dir="$WORK/gpu_amp"
step train_augment_gpu "$PY" -m tpnet.training.cli trainer=gpu augment=gpu trainer.max_epochs=2 $TINY hydra.run.dir="$WORK/gpu_augment"
step export_pt "$PY" -m tpnet.export.cli checkpoint="$WORK/gpu_amp/checkpoints/best.pt" output="$WORK/model.pt" log_to_mlflow=false hydra.run.dir="$WORK/export"
step export_pt2 "$PY" -m tpnet.export.cli checkpoint="$WORK/gpu_amp/checkpoints/best.pt" output="$WORK/model.pt2" format=pt2 log_to_mlflow=false hydra.run.dir="$WORK/export"
root=$(ls -d "$WORK"/cache/*/ 2>/dev/null | head -1)
step infer_cuda_pt "$PY" -m tpnet.inference.cli --model "$WORK/model.pt" --input "$root" --output "$WORK/infer_pt" --device cuda --batch-size 8
step infer_cuda_pt2 "$PY" -m tpnet.inference.cli --model "$WORK/model.pt2" --input "$root" --output "$WORK/infer_pt2" --device cuda --tta
step train_fp16_ema "$PY" -m tpnet.training.cli trainer=gpu trainer.precision=fp16 trainer.ema_decay=0.99 trainer.max_epochs=2 $TINY hydra.run.dir="$WORK/gpu_fp16"
step train_compile "$PY" -m tpnet.training.cli trainer=gpu trainer.compile=true trainer.max_epochs=2 $TINY hydra.run.dir="$WORK/gpu_compile"
cp "$WORK/gpu_amp/metrics.json" "$OUT/gpu_amp_metrics.json" 2>/dev/null
echo "failed steps: $fails"
exit "$fails"
