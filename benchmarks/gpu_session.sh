#!/usr/bin/env bash
# Every GPU measurement this project wants, in groups that each fit one device `run` call
# (600 s). On the device machine, after the wheel install of ../shared/device/README.md:
#   bash benchmarks/gpu_session.sh fields   # hash grid, coarse-NeRF step 128² / 384²
#   bash benchmarks/gpu_session.sh priors   # SDS step, SD + Zero123, fp32 + bf16, vs PyTorch
#   bash benchmarks/gpu_session.sh bsd_lora # BSD / DreamBooth / augment steps, lora mode, vs PyTorch
#   bash benchmarks/gpu_session.sh bsd_full # the same, full mode (two trainable UNets)
#   bash benchmarks/gpu_session.sh tests    # the gpu-marked tests (tests/test_gpu.py), then
#                                           # parity, precision, SDS, BSD, hash-grid, volume tests
#   bash benchmarks/gpu_session.sh raster   # rasterizer 1024², 10k/100k faces: nvdiffrast and
#                                           # pure JAX, then tests/test_rasterize_gpu.py
#   bash benchmarks/gpu_session.sh geometry # NeuS step 256², DMTet geometry step 1024²
#   bash benchmarks/gpu_session.sh testbed  # trains the testbed prior for 480 s (issue 10),
#                                           # then its held-out table
# PYTHON picks the interpreter (default python3). JSON and logs go to $OUT (the device
# tool's folder that comes back). Copy the figures into benchmarks/RESULTS.md with the GPU
# name, the date and these commands.
set -uo pipefail
group=${1:?usage: gpu_session.sh fields|priors|bsd_lora|bsd_full|tests|raster|geometry|testbed}
out=${OUT:?OUT must name the folder results go to}
py=${PYTHON:-python3}
mkdir -p "$out"
status=0
step() {   # step NAME CMD...: runs CMD, logs to $out/NAME.log, keeps going after a failure
  local name=$1; shift
  echo "== $name: $*"
  "$@" > "$out/$name.log" 2>&1 || { echo "   failed (exit $?), see $name.log"; status=1; }
  tail -n 1 "$out/$name.log"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.csv" 2>&1
case $group in
  fields)
    step hash_grid "$py" -m benchmarks.hash_grid --out "$out/hash_grid_gpu.json"
    step coarse_nerf_step_128 "$py" -m benchmarks.coarse_nerf_step --res 128 \
      --warmup 4 --repeats 5 --out "$out/coarse_nerf_step_128_gpu.json"
    step coarse_nerf_step_384 "$py" -m benchmarks.coarse_nerf_step --res 384 \
      --warmup 2 --repeats 3 --out "$out/coarse_nerf_step_384_gpu.json"
    ;;
  priors)
    for model in zero123 sd; do
      for prec in bf16 fp32; do
        step "sds_step_${model}_${prec}" "$py" -m benchmarks.sds_step --model "$model" \
          --precision "$prec" --repeats 10 --torch --out "$out/sds_step_${model}_${prec}_gpu.json"
      done
    done
    ;;
  bsd_lora|bsd_full)
    mode=${group#bsd_}
    for st in dreambooth bsd augment; do   # --full-state: the stage's whole state resident
      step "bsd_step_${mode}_${st}" "$py" -m benchmarks.bsd_step --mode "$mode" --step "$st" \
        --precision bf16 --repeats 5 --full-state --torch \
        --out "$out/bsd_step_${mode}_${st}_bf16_gpu.json"
    done
    ;;
  tests)
    step pytest_gpu "$py" -m pytest -q -s -W ignore -m gpu tests/test_gpu.py
    step pytest "$py" -m pytest -q -W ignore tests/test_prior_parity.py \
      tests/test_zero123_guidance.py tests/test_precision.py tests/test_sds.py \
      tests/test_hash_grid.py tests/test_volume.py tests/test_dpm_solver.py tests/test_lora.py \
      tests/test_bsd.py
    ;;
  raster)
    # torch (nvdiffrast) allocates beside JAX; the first nvdiffrast call compiles its plugin.
    export XLA_PYTHON_CLIENT_PREALLOCATE=false
    step rasterize_nvdiffrast "$py" -m benchmarks.rasterize --backend nvdiffrast \
      --out "$out/rasterize_nvdiffrast_gpu.json"
    step rasterize_jax "$py" -m benchmarks.rasterize --backend jax \
      --out "$out/rasterize_jax_gpu.json"
    step pytest_raster "$py" -m pytest -q -W ignore -m gpu tests/test_rasterize_gpu.py
    ;;
  geometry)
    export XLA_PYTHON_CLIENT_PREALLOCATE=false   # nvdiffrast's torch allocates beside JAX
    step neus_step_256 "$py" -m benchmarks.coarse_nerf_step --stage coarse_neus --res 256 \
      --warmup 2 --repeats 5 --out "$out/coarse_neus_step_256_gpu.json"
    step geometry_step_1024 "$py" -m benchmarks.geometry_step --res 1024 --warmup 2 \
      --repeats 5 --out "$out/geometry_step_1024_gpu.json"
    ;;
  testbed)
    # Needs assets/testbed on the device (it cannot reach the registries): carry "assets".
    # The CPU run's config; 480 s of training (timeout stops it; the run is resumable and its
    # checkpoints every 250 steps stay), then the held-out table of its newest checkpoint.
    run_dir="$out/testbed_prior"
    timeout 480 "$py" -m experiments.train_prior --config=configs/testbed.py \
      --config.run_dir="$run_dir" > "$out/train_prior.log" 2>&1
    echo "train_prior stopped with $? (124: the 480 s cap)"; tail -c 400 "$out/train_prior.log"
    step eval_prior "$py" -m experiments.eval_prior --run_dir="$run_dir" \
      --out="$out/testbed_prior_heldout_gpu.json"
    ;;
  *) echo "unknown group '$group': expected fields, priors, bsd_lora, bsd_full, tests, raster, geometry or testbed" >&2
     exit 2 ;;
esac
exit $status
