#!/usr/bin/env bash
# Two basin-bench binaries on the same workload, runs interleaved (A B A B ...), per-step medians
# of wall time and of CPU time: on a noisy machine, the way to tell whether a change moved a step.
#
#   bench/store/ab.sh RUNS DATA BIN_A BIN_B [workload|million]
#
# DATA is a file from `dos_workload.py gen` (the -o file for `workload`, the --million-out file
# for `million`). Build each binary at its commit with `cargo build --release -p basin-bench` and
# copy target/release/basin-bench aside. Store folders go under ${TMPDIR:-/tmp}/basin-ab.
set -euo pipefail
[ $# -ge 4 ] || { sed -n '2,9p' "$0"; exit 2; }
runs=$1 data=$2 a=$3 b=$4 scenario=${5:-workload}
work=${TMPDIR:-/tmp}/basin-ab
mkdir -p "$work"
out="$work/results.txt"
: >"$out"
extra=()
[ "$scenario" = workload ] && extra=(--single-puts 0)
for _ in $(seq 1 "$runs"); do
    for bin in "$a" "$b"; do
        rm -rf "$work/store"
        "$bin" "$scenario" --data "$data" --dir "$work/store" "${extra[@]}" 2>/dev/null |
            python3 -c 'import json, sys; d = json.load(sys.stdin)
print(sys.argv[1], " ".join("%s=%s,%s" % (k, v["seconds"], v.get("cpu_seconds", 0)) for k, v in d["steps"].items()))' "$bin" >>"$out"
    done
done
rm -rf "$work/store"
python3 - "$out" "$a" "$b" <<'PY'
import statistics, sys
from collections import defaultdict
steps = defaultdict(lambda: defaultdict(list))
cpu = defaultdict(lambda: defaultdict(list))
for line in open(sys.argv[1]):
    bin_, *pairs = line.split()
    for p in pairs:
        k, v = p.split('=')
        wall, cpu_s = v.split(',')
        steps[k][bin_].append(float(wall))
        cpu[k][bin_].append(float(cpu_s))
a, b = sys.argv[2], sys.argv[3]
ratio = lambda x, y: f"{y / x:6.2f}" if x else f"{'–':>6}"
# CPU time (every thread of the process) moves less with the machine's noise than wall time:
# a change that does less work shows there first. Steps without a CPU figure print '–'.
print(f"{'step':28} {'A median s':>11} {'B median s':>11} {'B/A':>6}  {'A CPU s':>8} {'B CPU s':>8} {'B/A':>6}"
      f"   (A={a}, B={b})")
for k, per in steps.items():
    ma, mb = statistics.median(per[a]), statistics.median(per[b])
    ca, cb = statistics.median(cpu[k][a]), statistics.median(cpu[k][b])
    print(f"{k:28} {ma:11.4f} {mb:11.4f} {ratio(ma, mb)}  {ca:8.4f} {cb:8.4f} {ratio(ca, cb)}")
PY
