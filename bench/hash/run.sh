#!/usr/bin/env bash
# basin hash/verify against rhash, hashdeep, b3sum and sha256sum on the same data, in one run.
#
#   bench/hash/run.sh            # everything: data, tools, build, timings, table
#   RUNS=5 bench/hash/run.sh     # more timed runs per case (default 3, after 1 warm-up)
#   BENCH_DIR=/data/b bench/hash/run.sh   # where the data lives (default /tmp/basin-bench-hash, ~2.5 GB)
#
# Data (made once, reused): a 2 GiB random file, and 50,000 files of 1-16 KiB in 10x10x5
# nested folders. All timings are warm-cache (hyperfine runs a warm-up first), as in the issue.
# Output: a markdown table on stdout with basin's time over each peer's (lower is better), plus
# the raw hyperfine JSON in $BENCH_DIR/results/.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$(pwd)
D=${BENCH_DIR:-/tmp/basin-bench-hash}
RUNS=${RUNS:-3}
R=$D/results
BIG=$D/big.bin
TREE=$D/tree
mkdir -p "$D" "$R"

need_apt=()
command -v rhash >/dev/null 2>&1 || need_apt+=(rhash)
command -v hashdeep >/dev/null 2>&1 || need_apt+=(hashdeep)
command -v hyperfine >/dev/null 2>&1 || need_apt+=(hyperfine)
if ((${#need_apt[@]})); then
  echo "installing ${need_apt[*]} from Debian packages" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v b3sum >/dev/null 2>&1; then
  echo "installing b3sum with cargo" >&2
  cargo install --locked b3sum >/dev/null
fi

echo "building basin (release)" >&2
cargo build --release --locked -p basin-cli >&2
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
BASIN=$TARGET/release/basin
test -x "$BASIN"

if [[ ! -f $BIG || $(stat -c %s "$BIG") -ne $((2 << 30)) ]]; then
  echo "making $BIG (2 GiB random)" >&2
  head -c $((2 << 30)) /dev/urandom > "$BIG.tmp" && mv "$BIG.tmp" "$BIG"
fi
if [[ ! -f $TREE/.complete ]]; then
  echo "making $TREE (50,000 files of 1-16 KiB)" >&2
  rm -rf "$TREE"
  python3 - "$TREE" <<'PY'
import os, random, sys
root = sys.argv[1]
rng = random.Random(20261121)
for i in range(50_000):
    d = os.path.join(root, f"a{i % 10:02d}", f"b{i // 10 % 10:02d}", f"c{i // 100 % 5}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:05d}.bin"), "wb") as f:
        f.write(rng.randbytes(rng.randint(1024, 16 * 1024)))
open(os.path.join(root, ".complete"), "w").close()
PY
fi

# hyperfine wrapper: case name, then pairs of (label, command). Results in $R/<case>.json.
hf() {
  local case=$1; shift
  local args=()
  while (($#)); do args+=(-n "$1" "$2"); shift 2; done
  hyperfine --style basic --warmup 1 --runs "$RUNS" --export-json "$R/$case.json" "${args[@]}" >&2
}

W=$D/work
rm -rf "$W"; mkdir -p "$W"
cd "$W"

hf big_sha256 \
  basin "$BASIN hash -q --algo sha256 $BIG" \
  rhash "rhash --sha256 $BIG" \
  sha256sum "sha256sum $BIG"
hf big_blake3 \
  basin "$BASIN hash -q --algo blake3 $BIG" \
  b3sum "b3sum $BIG"
hf big_4algo \
  basin "$BASIN hash -q --algo crc32,md5,sha1,sha256 $BIG" \
  rhash "rhash --crc32 --md5 --sha1 --sha256 $BIG"
hf big_md5_sha256 \
  basin "$BASIN hash -q --algo md5,sha256 $BIG" \
  hashdeep "hashdeep -c md5,sha256 $BIG"

# The tree into a fresh SQLite catalog each run (rhash writes no database at all).
hyperfine --style basic --warmup 1 --runs "$RUNS" --prepare "rm -f $W/t.db $W/t.db-wal $W/t.db-shm" \
  --export-json "$R/tree_4algo_sqlite.json" \
  -n basin "$BASIN hash -q --algo crc32,md5,sha1,sha256 --catalog $W/t.db $TREE" \
  -n rhash "rhash -r --crc32 --md5 --sha1 --sha256 $TREE > /dev/null" >&2
hf tree_md5_sha256 \
  basin "$BASIN hash -q --algo md5,sha256 --format hashdeep $TREE > /dev/null" \
  hashdeep "hashdeep -r -c md5,sha256 $TREE > /dev/null"
hf tree_sha256 \
  basin "$BASIN hash -q --algo sha256 $TREE > /dev/null" \
  rhash "rhash -r --sha256 $TREE > /dev/null" \
  sha256sum "find $TREE -type f -print0 | xargs -0 sha256sum > /dev/null"
hf tree_blake3 \
  basin "$BASIN hash -q --algo blake3 $TREE > /dev/null" \
  b3sum "find $TREE -type f -print0 | xargs -0 b3sum > /dev/null"

# verify against the catalog vs our own hash into it; then an unchanged rerun.
rm -f "$W"/v.db*
"$BASIN" hash -q --algo crc32,md5,sha1,sha256 --catalog "$W/v.db" "$TREE" 2>/dev/null
hf tree_verify \
  "basin verify" "$BASIN verify -q --catalog $W/v.db > /dev/null"
hf tree_rerun \
  "basin rerun (unchanged)" "$BASIN hash -q --algo crc32,md5,sha1,sha256 --catalog $W/v.db $TREE"

python3 - "$R" <<'PY'
import json, os, sys
R = sys.argv[1]
def load(case):
    with open(os.path.join(R, case + ".json")) as f:
        return {r["command"]: r for r in json.load(f)["results"]}
rows = [
    ("2 GiB file, sha256", "big_sha256", "target: basin <= rhash"),
    ("2 GiB file, blake3", "big_blake3", ""),
    ("2 GiB file, crc32+md5+sha1+sha256", "big_4algo", "target: <= 0.6 x rhash"),
    ("2 GiB file, md5+sha256", "big_md5_sha256", ""),
    ("50k tree, crc32+md5+sha1+sha256, basin into SQLite", "tree_4algo_sqlite", "target: <= 0.6 x rhash (no DB)"),
    ("50k tree, md5+sha256", "tree_md5_sha256", ""),
    ("50k tree, sha256", "tree_sha256", ""),
    ("50k tree, blake3", "tree_blake3", ""),
]
print("| case | basin s | peer | peer s | basin/peer | note |")
print("|---|---:|---|---:|---:|---|")
hash_4 = None
for title, case, note in rows:
    res = load(case)
    b = res["basin"]["mean"]
    if case == "tree_4algo_sqlite":
        hash_4 = b
    for peer, r in res.items():
        if peer == "basin":
            continue
        print(f"| {title} | {b:.3f} ± {res['basin']['stddev'] or 0:.3f} | {peer} | {r['mean']:.3f} ± {r['stddev'] or 0:.3f} | {b / r['mean']:.2f} | {note} |")
v = load("tree_verify")["basin verify"]["mean"]
u = load("tree_rerun")["basin rerun (unchanged)"]["mean"]
print(f"| 50k tree, verify from catalog (4 algorithms) | {v:.3f} | basin hash into SQLite | {hash_4:.3f} | {v / hash_4:.2f} | target: <= 1.5 |")
print(f"| 50k tree, unchanged rerun | {u:.3f} | | | | target: < 0.5 s |")
PY
