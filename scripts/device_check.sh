#!/usr/bin/env bash
# One prepared check for a machine with one GPU (or TPU): the parity suite's fast subset on the
# accelerator, then the benchmark of the full-size ADM presets with random weights (ffhq256:
# DDPM and DPS at batch 1 and 16, float32 and bfloat16, the hand-written VJPs on and off, block
# remat none and blocks; imagenet256_uncond: DPS at batch 1 and the largest batch that fits).
# Writes OUT/device_check.json (every result) and OUT/device_check.md (the table for
# docs/performance.md), within about 8 minutes on an H100-class GPU.
#
#   pip install -e '.[test]' 'jax[cuda12]'   # or jax[tpu]
#   bash scripts/device_check.sh OUT
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-device_check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
log="$out/device_check.log"
step() { echo "== $*" | tee -a "$log"; }
bench() {  # NAME TIMEOUT ARGS...: one benchmark call, its JSON as OUT/NAME.json
  local name=$1 limit=$2
  shift 2
  step "benchmark $name: $*"
  timeout "$limit" python -m scripts.benchmark --steps=2 --repeats=2 --out="$out/$name.json" "$@" \
    2>&1 | grep -v -e "^I[0-9]" -e "^W[0-9]" | tee -a "$log"
}

step "devices"
python -c "import jax; print(jax.devices())" 2>&1 | tee -a "$log"

step "parity, fast subset, on the accelerator"
timeout 120 python -m pytest -q -x -p no:cacheprovider tests/test_parity_dps.py \
  tests/test_parity_models.py tests/test_parity_ddpm.py tests/test_models_fused.py \
  2>&1 | tail -n 5 | tee -a "$log"

bench ffhq_dtypes 150 --arch=ffhq256 --samplers=ddpm,dps --batch=1,16 --dtype=float32,bfloat16
bench ffhq_vjp_on 60 --arch=ffhq256 --samplers=ddpm,dps --batch=16 --custom_vjp=on
bench ffhq_remat 60 --arch=ffhq256 --samplers=dps --batch=16 --remat=none,blocks
bench imagenet_b1 60 --arch=imagenet256_uncond --samplers=dps --batch=1 --remat=none,blocks
bench imagenet_big 90 --arch=imagenet256_uncond --samplers=dps --batch=8,16,32 --remat=blocks

step "collect"
python - "$out" <<'PY' 2>&1 | tee -a "$log"
import json, pathlib, sys
from jaxdiff.benchmark import markdown_table

out = pathlib.Path(sys.argv[1])
runs = [json.loads(p.read_text()) for p in sorted(out.glob("*.json")) if p.stem != "device_check"]
if not runs:
    sys.exit("no benchmark JSON was written")
merged = {k: runs[0][k] for k in ("device", "host", "versions")}
merged["results"] = [r for run in runs for r in run["results"]]
merged["ratios"] = [r for run in runs for r in run["ratios"]]
merged["remat_ratios"] = [r for run in runs for r in run.get("remat_ratios", [])]
(out / "device_check.json").write_text(json.dumps(merged, indent=2) + "\n")
(out / "device_check.md").write_text(markdown_table(merged))
print((out / "device_check.md").read_text())
PY
