#!/usr/bin/env bash
# Set up the peer runtimes that `edgeai bench --peers` compares against, on a fresh machine.
#
#   PEERS=/work/peers GGUF=/path/SmolLM2-135M-Instruct.Q4_1.gguf bash bench/peers/setup_peers.sh [STEP ...]
#   PEERS=/work/peers MODEL=qwen05 GGUF=/path/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf \
#       bash bench/peers/setup_peers.sh hf genai models_json      # another model: outputs named after MODEL
#
# Steps (default: venv builder hf genai optimum models_json; add `llamacpp` for the ~10 min source build):
#   venv       $PEERS/venv: onnxruntime, onnxruntime-genai 0.18, optimum + optimum-onnx (transformers < 4.58)
#   builder    $PEERS/venv-genai-builder: the genai model builder (needs transformers >= 5, onnx_ir)
#   hf         $PEERS/MODEL-hf: fp32 HF folder dequantized from the GGUF by edgeai's reader (EDGEAI_PYTHON);
#              Llama and Qwen2 GGUFs
#   genai      $PEERS/genai-int4[-MODEL]: onnxruntime-genai int4 build (CPU, 2 intra-op threads)
#   optimum    $PEERS/optimum-fp32[-MODEL]: optimum export with past KV (text-generation-with-past)
#   llamacpp   llama-cpp-python 0.3.36 built from source into $PEERS/venv WITHOUT -march=native / AMX
#   models_json  $PEERS/peer_models[-MODEL].json, the file to hand to `edgeai bench --peers --peer-config`
#
# MODEL (default smollm2) names the outputs; the default keeps the SmolLM2 names above without a suffix.
# The hf and genai steps of a 1.5B model hold its fp32 weights (6 GB) in memory: 15 GB peak for genai (measured).
#
# torch: ONLY `torch==2.13.0` (the local CPU wheel); any other torch spec downloads GBs of CUDA wheels.
# Every step logs to $PEERS/setup_logs/STEP.log with wall time and peak RSS (/usr/bin/time -v when present).
set -euo pipefail
PEERS=${PEERS:-/work/peers}
GGUF=${GGUF:-${EDGEAI_HOME:-$HOME/.cache/edgeai}/sources/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf}
EDGEAI_PYTHON=${EDGEAI_PYTHON:-python3}
MODEL=${MODEL:-smollm2}
SFX=$([ "$MODEL" = smollm2 ] || echo "-$MODEL")  # output suffix: none for the default SmolLM2 peers
HF_DIR=$PEERS/$MODEL-hf GENAI_DIR=$PEERS/genai-int4$SFX OPTIMUM_DIR=$PEERS/optimum-fp32$SFX
PY=${PY:-python3}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$PEERS/setup_logs"
log() { echo "[$(date +%T)] $*"; }
T() {  # T NAME CMD...: run, log, print wall time
  local name=$1; shift; log "== $name"
  if [ -x /usr/bin/time ]; then
    /usr/bin/time -v -o "$PEERS/setup_logs/$name.time" "$@" > "$PEERS/setup_logs/$name.log" 2>&1 \
      || { tail -20 "$PEERS/setup_logs/$name.log"; return 1; }
    grep -E 'Elapsed|Maximum resident' "$PEERS/setup_logs/$name.time" || true
  else
    local t0=$SECONDS
    "$@" > "$PEERS/setup_logs/$name.log" 2>&1 || { tail -20 "$PEERS/setup_logs/$name.log"; return 1; }
    echo "   $((SECONDS - t0)) s"
  fi
}

step_venv() {
  [ -x "$PEERS/venv/bin/python" ] || $PY -m venv "$PEERS/venv"
  T venv_torch "$PEERS/venv/bin/pip" install torch==2.13.0
  T venv_pkgs "$PEERS/venv/bin/pip" install onnxruntime==1.32.0 onnxruntime-genai==0.18.0 optimum==2.1.0 \
      optimum-onnx==0.1.0 "transformers==4.57.6" tokenizers onnx psutil accelerate safetensors numpy
}
step_builder() {
  [ -x "$PEERS/venv-genai-builder/bin/python" ] || $PY -m venv "$PEERS/venv-genai-builder"
  T builder_torch "$PEERS/venv-genai-builder/bin/pip" install torch==2.13.0
  T builder_pkgs "$PEERS/venv-genai-builder/bin/pip" install "transformers>=5" onnxruntime-genai==0.18.0 \
      onnxruntime==1.32.0 onnx onnx_ir sentencepiece safetensors accelerate
}
step_hf() {
  [ -f "$GGUF" ] || { echo "GGUF not found: $GGUF (set GGUF=...)"; return 1; }
  T "hf$SFX" nice "$EDGEAI_PYTHON" "$HERE/gguf_to_hf.py" "$GGUF" "$HF_DIR"
}
step_genai() {
  T "genai_int4$SFX" nice "$PEERS/venv-genai-builder/bin/python" -m onnxruntime_genai.models.builder \
      -i "$HF_DIR" -o "$GENAI_DIR" -p int4 -e cpu -c "$PEERS/cache_dir$SFX"
  # 2 intra-op threads like every other config (ORT's default is the number of physical cores)
  "$PEERS/venv/bin/python" - "$GENAI_DIR/genai_config.json" <<'PY'
import json, sys
p = sys.argv[1]; c = json.load(open(p))
c["model"]["decoder"].setdefault("session_options", {}).update({"intra_op_num_threads": 2, "inter_op_num_threads": 1})
json.dump(c, open(p, "w"), indent=4)
PY
}
step_optimum() {
  T "optimum_fp32$SFX" nice "$PEERS/venv/bin/optimum-cli" export onnx -m "$HF_DIR" \
      --task text-generation-with-past "$OPTIMUM_DIR"
}
step_llamacpp() {
  # The default build uses -march=native, which emits AMX tile instructions: CPUID reports AMX here but the
  # first tile instruction traps (SIGILL). Build with explicit instruction sets, AMX off, and each optional
  # set only when /proc/cpuinfo lists it: e.g. GGML_AVX_VNNI (VEX-encoded vpdpbusd) traps on CPUs that have
  # AVX512_VNNI but not AVX_VNNI (seen here: SIGILL in ggml_vec_dot_q4_1_q8_1).
  has() { grep -qw "$1" /proc/cpuinfo && echo ON || echo OFF; }
  local args="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=$(has avx2) -DGGML_FMA=$(has fma)"
  args="$args -DGGML_F16C=$(has f16c) -DGGML_BMI2=$(has bmi2) -DGGML_AVX_VNNI=$(has avx_vnni)"
  args="$args -DGGML_AVX512=$(has avx512f) -DGGML_AVX512_VBMI=$(has avx512vbmi)"
  args="$args -DGGML_AVX512_VNNI=$(has avx512_vnni) -DGGML_AVX512_BF16=$(has avx512_bf16)"
  args="$args -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
  log "llama.cpp CMAKE_ARGS: $args"
  mkdir -p "$PEERS/src"
  [ -f "$PEERS/src/llama_cpp_python-0.3.36.tar.gz" ] || \
    "$PEERS/venv/bin/pip" download llama-cpp-python==0.3.36 --no-deps --no-binary :all: -d "$PEERS/src"
  export CMAKE_BUILD_PARALLEL_LEVEL=2 CMAKE_ARGS="$args"
  T llamacpp nice "$PEERS/venv/bin/pip" install -v --force-reinstall --no-deps --no-cache-dir \
    "$PEERS"/src/llama_cpp_python-0.3.36.tar.gz
  "$PEERS/venv/bin/pip" install -q diskcache jinja2 typing-extensions numpy
  # smoke test in a child: an illegal instruction kills only it
  "$PEERS/venv/bin/python" - "$GGUF" <<'PY' || { echo "llama.cpp smoke test FAILED (illegal instruction?)"; return 1; }
import sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_threads=1, n_ctx=256, verbose=False)
next(iter(llm.generate([1, 2, 3], temp=0.0)))
print("llama.cpp smoke test ok")
PY
}
step_models_json() {
  cat > "$PEERS/peer_models$SFX.json" <<JSON
{
  "llamacpp": {"python": "$PEERS/venv/bin/python", "model": "$GGUF"},
  "genai": {"python": "$PEERS/venv/bin/python", "model": "$GENAI_DIR"},
  "optimum": {"python": "$PEERS/venv/bin/python", "model": "$OPTIMUM_DIR"}
}
JSON
  log "wrote $PEERS/peer_models$SFX.json"
}
if [ $# -eq 0 ]; then set -- venv builder hf genai optimum models_json; fi
for s in "$@"; do step_$s; done
log "done: $*"
