#!/usr/bin/env bash
# The object-store benchmark: basin vs disk-objectstore on identical data, in one run, with the
# physical limits (dd, cold/warm read) and the git anchor measured on the same bytes.
#
#   bench/store/run.sh [-n 20000] [--quick] [-r RUNS] [--million-n N] [--big-mib MIB] [--skip-dos-million]
#
# -r RUNS: repeat the main workload RUNS times per side, dos and basin interleaved, and report the
# per-step median (default 1; a busy shared machine makes single runs noisy).
# --quick: N=2000 (unless -n is given), 50,000 small objects instead of 1,000,000, a 256 MiB big
# object instead of 4 GiB. Heavy: run it under `nice`. Results (JSON + table.md) go to
# $BASIN_BENCH_DIR/results-<time> (default /tmp/basin-bench); the table is printed at the end.
# The disk-objectstore virtualenv lives in $BASIN_BENCH_VENV (default ~/.cache/basin-bench/dos-venv)
# and is created on first use with `python3 -m venv` + `pip install disk-objectstore`.
set -euo pipefail

n=""
quick=0
runs=1
million_n=""
big_mib=""
skip_dos_million=0
dos_million_timeout_s=${BASIN_BENCH_DOS_MILLION_TIMEOUT_S:-900}
while [ $# -gt 0 ]; do
    case "$1" in
        -n) n="$2"; shift 2 ;;
        --quick) quick=1; shift ;;
        -r|--runs) runs="$2"; shift 2 ;;
        --million-n) million_n="$2"; shift 2 ;;
        --big-mib) big_mib="$2"; shift 2 ;;
        --skip-dos-million) skip_dos_million=1; shift ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
if [ "$quick" = 1 ]; then
    n=${n:-2000}; million_n=${million_n:-50000}; big_mib=${big_mib:-256}
else
    n=${n:-20000}; million_n=${million_n:-1000000}; big_mib=${big_mib:-4096}
fi

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
venv=${BASIN_BENCH_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/basin-bench/dos-venv}
work=${BASIN_BENCH_DIR:-${TMPDIR:-/tmp}/basin-bench}
results="$work/results-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$results"
# The machine may be shared: keep the load at the start with the results, the report prints it.
cut -d' ' -f1-3 /proc/loadavg >"$results/loadavg_start.txt"
# CPU time the hypervisor gave to others (steal) over the run: the report prints its share.
head -1 /proc/stat >"$results/cpu_start.txt"

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import disk_objectstore' 2>/dev/null; then
    echo "== creating the disk-objectstore virtualenv in $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet disk-objectstore
fi

echo "== building basin-bench (release)" >&2
(cd "$repo" && cargo build --quiet --release -p basin-bench)
target_dir=${CARGO_TARGET_DIR:-$repo/target}
bench="$target_dir/release/basin-bench"

echo "== generating the workload: N=$n, $million_n small objects" >&2
"$venv/bin/python" "$here/dos_workload.py" gen -n "$n" -o "$work/data.bin" \
    --million-n "$million_n" --million-out "$work/million.bin" | tee "$results/data.json" >&2

for run in $(seq 1 "$runs"); do
    echo "== disk-objectstore workload (run $run of $runs)" >&2
    "$venv/bin/python" "$here/dos_workload.py" run --data "$work/data.bin" -d "$work/dos-store" \
        --json-out "$results/dos.$run.json" >/dev/null
    echo "== basin workload (run $run of $runs)" >&2
    # A failing basin scenario is reported (its rows show '–' and count as missed), not fatal.
    rm -rf "$work/basin-store" "$work/basin-store.single-puts"
    "$bench" workload --data "$work/data.bin" --dir "$work/basin-store" --json-out "$results/basin.$run.json" \
        >/dev/null || echo "!! basin workload failed (exit $?)" >&2
    # The limits the workload's steps are judged by, once per run like the steps themselves: the
    # disk's speed drifts within minutes, and one sample against a median of runs is a coin toss.
    python3 "$here/limits.py" --data "$work/data.bin" --dir "$work/limits" --between-runs \
        --json-out "$results/limits_between.$run.json" >/dev/null
done

echo "== basin: $million_n small objects direct to pack" >&2
rm -rf "$work/basin-million"
"$bench" million --data "$work/million.bin" --dir "$work/basin-million" \
    --json-out "$results/basin_million.json" >/dev/null || echo "!! basin million failed (exit $?)" >&2
if [ "$skip_dos_million" = 1 ]; then
    echo '{"skipped": "--skip-dos-million"}' >"$results/dos_million.json"
else
    echo "== disk-objectstore: $million_n small objects direct to pack (time limit ${dos_million_timeout_s} s)" >&2
    if ! timeout "$dos_million_timeout_s" "$venv/bin/python" "$here/dos_workload.py" run \
        --million "$work/million.bin" -d "$work/dos-million" --json-out "$results/dos_million.json" >/dev/null; then
        echo "{\"skipped\": \"did not finish within ${dos_million_timeout_s} s\"}" >"$results/dos_million.json"
        rm -rf "$work/dos-million"
    fi
fi

echo "== basin: one $big_mib MiB object" >&2
rm -rf "$work/basin-big"
"$bench" big --size-mib "$big_mib" --dir "$work/basin-big" --json-out "$results/basin_big.json" >/dev/null ||
    echo "!! basin big object failed (exit $?)" >&2
rm -rf "$work/basin-store" "$work/basin-store.single-puts" "$work/basin-million" "$work/basin-big"

echo "== physical limits and git anchor" >&2
million_bytes=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["million_bytes"])' "$results/data.json")
python3 "$here/limits.py" --data "$work/data.bin" --dir "$work/limits" \
    --size "million=$million_bytes" --size "big=$((big_mib * 1024 * 1024))" --json-out "$results/limits.json" >/dev/null

rm -f "$work/data.bin" "$work/million.bin"
cut -d' ' -f1-3 /proc/loadavg >"$results/loadavg_end.txt"
head -1 /proc/stat >"$results/cpu_end.txt"
python3 "$here/report.py" "$results" | tee "$results/table.md"
echo "(results in $results)" >&2
