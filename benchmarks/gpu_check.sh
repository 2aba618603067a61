#!/usr/bin/env bash
# The CUDA path, checked on a lent GPU machine in one go (under 8 minutes on an H200):
#   1. rnnkit from this working tree in that machine's Python, and the test suite there;
#   2. short trainings on the device: the chapter (bptt, autograd, torch), GRU and LSTM (bptt,
#      torch), minGRU/minLSTM (the log-space scan) and the transformer, in fp32, bf16 and fp16 — the loss must fall and stay finite; a resumed run must
#      equal an uninterrupted one; a run trained on the device must generate on the CPU;
#   3. a speed table (benchmarks/gpu_speed.py): the book's loop, nn.RNN, rnnkit bptt / torch;
#   4. the log, the table and a summary as JSON under $OUT.
#
#   benchmarks/gpu_check.sh                     # on the GPU machine (the device tool sets $OUT)
#   DEVICE=cpu benchmarks/gpu_check.sh          # the same steps here, smaller, fp16 left out
#
# Packages the machine lacks travel as wheels in .whl/ (benchmarks/gpu_wheels.sh fetches them).
# SKIP_TESTS=1 leaves out step 1's test suite (CI runs it here anyway).
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-$PWD/gpu_check_out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
WORK=$(mktemp -d)
exec > >(tee "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1 CUBLAS_WORKSPACE_CONFIG=:4096:8
RESULTS="$WORK/results.jsonl"
failures=0

record() {  # record NAME STATUS DETAIL
  echo "$3" | "$PY" -c 'import json,sys; print(json.dumps({"check": sys.argv[1], "ok": sys.argv[2] != "FAILED", "status": sys.argv[2], "detail": sys.stdin.read().strip()[-2000:]}))' "$1" "$2" >>"$RESULTS"
  [ "$2" = ok ] || [ "$2" = refused ] || failures=$((failures + 1))
  echo "[$2] $1"
}

echo "== 1. install and test ($(date -u +%FT%TZ), device $DEVICE)"
if [ -d .whl ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if ! "$PY" -m pip install -q --no-deps --no-build-isolation -e . >"$WORK/pip.log" 2>&1; then
  echo "(no editable install: $(tail -n 1 "$WORK/pip.log"); using the tree on PYTHONPATH)"
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
"$PY" - <<'EOF'
import platform, torch, rnnkit
print(f"python {platform.python_version()}, torch {torch.__version__}, "
      f"cuda {torch.cuda.is_available()}"
      + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""))
EOF
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  ignore=()
  "$PY" -c "import nbclient, nbformat, ipykernel" 2>/dev/null ||
    { ignore+=(--ignore=tests/test_notebooks.py); echo "(no Jupyter kernel: notebook tests left out)"; }
  "$PY" -c "import playwright" 2>/dev/null ||
    { ignore+=(--ignore=tests/test_browser.py); echo "(no Playwright: page tests left out)"; }
  if timeout 330 "$PY" -m pytest -x -q -p no:cacheprovider "${ignore[@]}" tests >"$WORK/tests.log" 2>&1; then
    record "test suite" ok "$(tail -n 3 "$WORK/tests.log")"
  else
    record "test suite" FAILED "$(tail -n 40 "$WORK/tests.log")"
  fi
  tail -n 3 "$WORK/tests.log"
fi

echo "== 2. training on $DEVICE"
if [ "$DEVICE" = cpu ]; then TOKENS=6000 PRECISIONS="fp32 bf16"; else TOKENS=40000 PRECISIONS="fp32 bf16 fp16"; fi
COMMON=(--device "$DEVICE" --hidden 256 --max-tokens "$TOKENS" --val-fraction 0.05
        --sample-every 0 --lr 1 --json)
falls() {  # the run's JSON lines: finite, and the training perplexity falls
  "$PY" - "$1" <<'EOF'
import json, math, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")][:-1]
ppl = [r["train_ppl"] for r in rows] + [rows[-1]["val_ppl"]]
assert all(math.isfinite(p) for p in ppl), ppl
assert rows[-1]["train_ppl"] < rows[0]["train_ppl"], ppl
print(" → ".join(f"{r['train_ppl']:.2f}" for r in rows), f"(val {rows[-1]['val_ppl']:.2f},",
      f"{rows[-1]['tokens_per_s']:,.0f} tokens/s)")
EOF
}
for combo in rnn:bptt rnn:autograd rnn:torch gru:bptt gru:torch lstm:bptt lstm:torch \
             mingru:torch minlstm:torch transformer:torch; do
  cell=${combo%%:*} impl=${combo##*:}
  extra=()      # the blocks (minGRU: the log-space scan on a GPU) train with AdamW
  case $cell in min*|transformer) extra=(--optimizer adamw --lr 3e-3 --layers 2 --num-steps 64);; esac
  for precision in $PRECISIONS; do
    run="$WORK/$cell-$impl-$precision"
    "$PY" -m rnnkit train "${COMMON[@]}" --cell "$cell" --impl "$impl" "${extra[@]}" \
        --precision "$precision" --epochs 4 --out "$run" >"$run.out" 2>"$run.err"
    code=$?
    if [ $code = 2 ]; then     # a combination rnnkit refuses by design, in one line
      record "train $cell $impl $precision" refused "$(tail -n 1 "$run.err")"
    elif [ $code = 0 ] && detail=$(falls "$run.out" 2>&1); then
      record "train $cell $impl $precision" ok "$detail"
    else
      record "train $cell $impl $precision" FAILED "$(tail -n 5 "$run.err") ${detail:-}"
    fi
    detail=
  done
done

for combo in rnn:bptt:fp32 lstm:torch:bf16; do
  IFS=: read -r cell impl precision <<<"$combo"
  whole="$WORK/whole-$cell" part="$WORK/part-$cell"
  args=("${COMMON[@]}" --cell "$cell" --impl "$impl" --precision "$precision")
  if "$PY" -m rnnkit train "${args[@]}" --epochs 4 --out "$whole" >/dev/null 2>"$whole.err" &&
     "$PY" -m rnnkit train "${args[@]}" --epochs 2 --out "$part" >/dev/null 2>"$part.err" &&
     "$PY" -m rnnkit train "${args[@]}" --epochs 4 --resume --out "$part" >/dev/null 2>>"$part.err" &&
     detail=$("$PY" - "$whole" "$part" 2>&1 <<'EOF'
import sys
from pathlib import Path
from rnnkit.checkpoint import read_checkpoint
a, b = (read_checkpoint(Path(d) / "model.safetensors")[0] for d in sys.argv[1:])
diff = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
same_metrics = open(f"{sys.argv[1]}/metrics.jsonl").read().count("\n") == \
    open(f"{sys.argv[2]}/metrics.jsonl").read().count("\n")
print(f"largest weight difference, resumed vs whole: {diff:.3g}")
assert diff <= 1e-5 and same_metrics, diff
EOF
); then
    record "resume $cell $impl $precision" ok "$detail"
  else
    record "resume $cell $impl $precision" FAILED "$(tail -n 5 "$part.err") ${detail:-}"
  fi
  detail=
done

# a run trained on the device, generated from on a machine without one (the GPU hidden)
if text=$(CUDA_VISIBLE_DEVICES= "$PY" -m rnnkit generate "$WORK/whole-lstm" --prefix "time " \
            --num-chars 40 2>&1); then
  record "generate on cpu" ok "$text"
else
  record "generate on cpu" FAILED "$text"
fi

echo "== 3. speed on $DEVICE"
quick=(); [ "$DEVICE" = cpu ] && quick=(--quick)
if "$PY" benchmarks/gpu_speed.py --device "$DEVICE" "${quick[@]}" --json-out "$OUT/speed.json" \
    >"$WORK/speed.log" 2>&1; then
  record "speed table" ok "$(grep -v '^{' "$WORK/speed.log")"
else
  record "speed table" FAILED "$(tail -n 20 "$WORK/speed.log")"
fi
grep -v '^{' "$WORK/speed.log"

echo "== 4. summary"
"$PY" - "$RESULTS" "$OUT/gpu_check.json" "$DEVICE" <<'EOF'
import json, sys
checks = [json.loads(l) for l in open(sys.argv[1])]
json.dump({"device": sys.argv[3], "checks": checks,
           "failed": [c["check"] for c in checks if not c["ok"]]}, open(sys.argv[2], "w"), indent=1)
print(f"{sum(c['status'] == 'ok' for c in checks)} of {len(checks)} checks passed, "
      f"{sum(c['status'] == 'refused' for c in checks)} refused by design, "
      f"failed: {', '.join(c['check'] for c in checks if not c['ok']) or 'none'}")
EOF
rm -rf "$WORK"
exit $((failures > 0))
