#!/usr/bin/env bash
# CUDA-path check for a machine with a GPU (run from the repo root with tpnet importable, e.g.
# PYTHONPATH=src): trains on CUDA with bf16 AMP + channels_last, then with torch.compile, exports the result
# and runs tpnet-infer on the GPU. Writes a log per step to ${OUT:-/tmp/gpu_check}. Exit code: failed steps.
set -u
OUT="${OUT:-/tmp/gpu_check}"
WORK="${WORK:-/tmp/gpu_check_work}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT" "$WORK"
fails=0
step() {  # step NAME command...
  local name=$1; shift
  local t0=$SECONDS
  if "$@" >"$OUT/$name.log" 2>&1; then echo "PASS $name ($((SECONDS - t0)) s)"; else echo "FAIL $name ($((SECONDS - t0)) s)"; tail -20 "$OUT/$name.log"; fails=$((fails + 1)); fi
}
TINY="data.synthetic.subjects=8 data.synthetic.frames_per_subject=4 data.synthetic.cache_dir=$WORK/cache logger.enabled=false evaluation.n_boot=50 data.num_workers=4"
"$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0), 'bf16', torch.cuda.is_bf16_supported())"
step train_bf16_channels_last "$PY" -m tpnet.training.cli trainer=gpu trainer.max_epochs=2 $TINY hydra.run.dir="$WORK/gpu_amp"
step train_compile "$PY" -m tpnet.training.cli trainer=gpu trainer.compile=true trainer.max_epochs=2 $TINY hydra.run.dir="$WORK/gpu_compile"
step train_fp16_ema "$PY" -m tpnet.training.cli trainer=gpu trainer.precision=fp16 trainer.ema_decay=0.99 trainer.max_epochs=2 $TINY hydra.run.dir="$WORK/gpu_fp16"
step export_pt "$PY" -m tpnet.export.cli checkpoint="$WORK/gpu_amp/checkpoints/best.pt" output="$WORK/model.pt" log_to_mlflow=false hydra.run.dir="$WORK/export"
step export_pt2 "$PY" -m tpnet.export.cli checkpoint="$WORK/gpu_amp/checkpoints/best.pt" output="$WORK/model.pt2" format=pt2 log_to_mlflow=false hydra.run.dir="$WORK/export"
root=$(ls -d "$WORK"/cache/*/ | head -1)
step infer_cuda_pt "$PY" -m tpnet.inference.cli --model "$WORK/model.pt" --input "$root" --output "$WORK/infer_pt" --device cuda --batch-size 8
step infer_cuda_pt2 "$PY" -m tpnet.inference.cli --model "$WORK/model.pt2" --input "$root" --output "$WORK/infer_pt2" --device cuda --tta
cp "$WORK/gpu_amp/metrics.json" "$OUT/gpu_amp_metrics.json" 2>/dev/null
echo "failed steps: $fails"
exit "$fails"
