#!/bin/bash
# One sitting on a machine with many cores: the unary figures against the no-op gRPC server (CPU per call
# in open loop, and closed-loop throughput), then several service processes on a Redis Cluster. Each part's
# output (JSON lines) and the machine's description are written under OUT (default benchmarks/results/).
#
#   benchmarks/many_cores.sh unary [SECONDS]    unary_cost.py (500, 1,000, 2,000/s, half the ceiling, a
#                                               py-spy split at 1,000/s) and throughput.py: about 4 minutes
#   benchmarks/many_cores.sh scale [SECONDS]    scale.py over 1, 2, 4, 8 processes (PROCESSES to change, STEPS
#                                               to run fewer kinds, e.g. unary-routed,stream-routed); groups
#                                               spread every 0.3 s so that a 16-process step starts in seconds
#
# PY names the interpreter (default: the project's .venv, else python3); redis-server on PATH.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
PY=${PY:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
S=${2:-8}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
{ date -u; nproc; grep -m1 'model name' /proc/cpuinfo; free -g | head -2; $PY -V; uname -r
  $PY -c "import grpc, google.protobuf as p; print('grpcio', grpc.__version__, 'protobuf', p.__version__)"
  redis-server --version; git log --oneline -1 2>/dev/null; cat /proc/loadavg; } 2>&1 | tee "$OUT/machine.txt"
case ${1:-} in
unary)
  timeout 300 $PY benchmarks/unary_cost.py --rates 500,1000,2000,half --seconds "$S" --settle-limit 3 \
    --profile-rate 1000 2>&1 | tee "$OUT/unary_cost.txt"
  timeout 220 $PY benchmarks/throughput.py --rounds 3 --seconds "$((S / 2 + 1))" --scaling 16,64,128,256 2>&1 \
    | tee "$OUT/throughput.txt" ;;
scale)
  timeout 900 $PY benchmarks/scale.py --processes "${PROCESSES:-1,2,4,8}" --seconds "$S" --balance-ms 300 \
    --steps "${STEPS:-unary-routed,unary-forwarded,stream-routed,stream-forwarded}" 2>&1 | tee "$OUT/scale.txt" ;;
*)
  echo "usage: $0 unary|scale [SECONDS]" >&2; exit 2 ;;
esac
