#!/usr/bin/env bash
# Tests the PyTorch baseline on CPUs (gloo), where there is no GPU: a matrix
# of configs on 1, 2 and 4 processes, each verified against float64
# (--check), and, when bin/moerun is built, the same inputs as moerun's CPU
# backend (--from-dump) giving the same outputs. Timings mean nothing here.
#
#   PYTHON=/tmp/venv/bin/python scripts/baseline/cpu-test.sh
#
# Needs torch (and numpy for --from-dump) in PYTHON's environment: from PyPI,
# `python3 -m venv /tmp/venv && /tmp/venv/bin/pip install torch numpy`.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
PYTHON=${PYTHON:-python3}
MOERUN=${MOERUN:-bin/moerun}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
"$PYTHON" -c 'import torch' || { echo "cpu-test: $PYTHON has no torch"; exit 1; }
fails=0
ok() { echo "cpu-test: $1: pass"; }
bad() { echo "cpu-test: $1: FAIL"; fails=$((fails + 1)); }
baseline() { # W ARGS...
  local w=$1; shift
  timeout -k 5 600 "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node="$w" \
      scripts/baseline/moe_baseline.py --device cpu --iters 2 --warmup 1 "$@"
}

for w in 1 2 4; do
  for gm in auto on; do
    name="matrix W=$w grouped-mm=$gm"
    if baseline "$w" --tokens 0,1,37,64 --hidden 64 --ffn-hidden 96 --experts 4,8 --topk 1,2 \
        --ffn relu,gelu,swiglu --dtype fp32,bf16 --capacity-factor 0,0.5 --check --grouped-mm "$gm" \
        --json "$TMP/m$w$gm.json" >"$TMP/log" 2>&1; then ok "$name"
    else bad "$name"; grep -m5 -E 'FAIL|rror' "$TMP/log"; fi
  done
done
name="skew, no renorm, W=2"
if baseline 2 --tokens 5,64 --hidden 64 --ffn-hidden 64 --experts 2,8 --topk 1,2 --route skew --no-renorm \
    --capacity-factor 0,1 --check >"$TMP/log" 2>&1; then ok "$name"; else bad "$name"; grep -m5 FAIL "$TMP/log"; fi
name="refuses E not a multiple of W"
if ! baseline 4 --experts 6 --tokens 4 >"$TMP/log" 2>&1 && grep -q 'must be a multiple' "$TMP/log"; then ok "$name"; else bad "$name"; fi

# The same inputs as moerun's CPU backend give the same output.
if [ -x "$MOERUN" ]; then
  for spec in "relu fp32 0 8 2 4" "gelu bf16 1 8 2 4" "swiglu bf16 0.5 16 3 4" "swiglu fp32 1 4 1 2" \
              "relu bf16 0 8 2 1"; do
    read -r -a f <<<"$spec"; set -- "${f[@]}"
    name="moerun dump W=$6 ffn=$1 $2 cf=$3 E=$4 k=$5"
    rm -rf "$TMP/dump"
    if ! timeout -k 5 300 "$MOERUN" launch -n "$6" -- bench --backend cpu --tokens 50 --hidden 64 --ffn-hidden 96 \
        --experts "$4" --topk "$5" --ffn "$1" --dtype "$2" --capacity-factor "$3" --iters 1 --warmup 0 \
        --dump "$TMP/dump" >"$TMP/log" 2>&1; then
      bad "$name (moerun did not run)"; tail -3 "$TMP/log"; continue
    fi
    if baseline "$6" --from-dump "$TMP/dump" --check >"$TMP/log" 2>&1; then ok "$name: $(grep -o 'relative difference [^ ]*' "$TMP/log")"
    else bad "$name"; grep -m3 -E 'from-dump|FAIL|rror' "$TMP/log"; fi
  done
else
  echo "cpu-test: $MOERUN not built: the cross-check with moerun's CPU backend is skipped"
fi
echo "cpu-test: $fails failed"
[ $fails -eq 0 ]
