#!/usr/bin/env bash
# fuse3-floor.sh: the FUSE floor through fuse-native (libfuse2) vs libfuse3, measured (issue 13, step 5):
# fuse-floor-server.ts (fuse-native), fuse3-floor.c (libfuse3, reads answered in C) and
# napi-fuse3-floor.cjs (libfuse3 through the napi-fuse3/ spike addon, reads answered in JS).
# A spike, not part of `npm run bench`. Run as root from anywhere, after `tsc` (needs
# dist/bench/fuse-floor-server.js):   bash bench/spike/fuse3-floor.sh [ROUNDS] [SIZE_BYTES]
#
# Each trial: a fresh mount (so the page cache is cold), `dd if=MNT/blob of=/dev/null bs=1M`, timed, then
# SIGTERM to the server (by pid) and `fusermount -uz` on the exact mountpoint. Variants run interleaved,
# their order rotated every round; medians are reported. The read request size is observed, not assumed:
# fuse3-floor.c --stats keeps a histogram of the `size` argument of every READ; for fuse-native the
# unchanged server runs with the count-reads.cjs preload, which does the same for `len`.
set -euo pipefail

ROUNDS=${1:-3}
SIZE=${2:-1073741824}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SERVER_JS="$ROOT/dist/bench/fuse-floor-server.js"
READER=${READER:-dd}
case "$READER" in dd | cat) ;; *) echo "fuse3-floor.sh: READER must be dd or cat, not $READER" >&2; exit 2 ;; esac

if [ "$(id -u)" != 0 ]; then
  echo "fuse3-floor.sh: run as root (it writes /sys/class/bdi/*/read_ahead_kb of its own mounts)" >&2
  exit 2
fi
if [ ! -f "$SERVER_JS" ]; then
  echo "fuse3-floor.sh: $SERVER_JS missing; build first: ./node_modules/.bin/tsc -p tsconfig.json" >&2
  exit 2
fi

# Install only what is missing. libfuse3-dev (with libfuse3-3) sits beside libfuse2 without conflict.
# The fuse3 package (fusermount3) would *replace* Debian's fuse package (fusermount, used by fuse-native
# and the lab helpers), so it is installed only when no fusermount of either kind exists: as root,
# libfuse3 mounts with mount(2) and unmounts with umount2(2) itself and never needs fusermount3.
if ! pkg-config --exists fuse3; then
  apt-get install -y libfuse3-dev >&2
fi
if command -v fusermount3 >/dev/null; then
  UMOUNT=fusermount3
elif command -v fusermount >/dev/null; then
  UMOUNT=fusermount
else
  apt-get install -y fuse3 >&2
  UMOUNT=fusermount3
fi

WORK=$(mktemp -d /tmp/regfs-fuse3-floor.XXXXXX)
PIDS=()
MNTS=()
cleanup() {
  local p m i
  for p in "${PIDS[@]}"; do
    if kill -0 "$p" 2>/dev/null; then
      kill -TERM "$p" 2>/dev/null || true
      for i in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null || true
    fi
  done
  for m in "${MNTS[@]}"; do
    if awk -v m="$m" '$5 == m { found = 1 } END { exit !found }' /proc/self/mountinfo; then
      "$UMOUNT" -uz "$m" 2>/dev/null || true
    fi
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

gcc -O2 -Wall -Wextra -o "$WORK/fuse3-floor" "$ROOT/bench/spike/fuse3-floor.c" $(pkg-config --cflags --libs fuse3)

# The N-API variant (libfuse3, reads answered in JS) needs node-gyp, which ships inside npm, and the Node
# headers of the running node (PREFIX/include/node): built offline into $WORK, skipped if that fails.
NODE_GYP="$(npm root -g)/npm/node_modules/node-gyp/bin/node-gyp.js"
NODE_PREFIX=$(dirname "$(dirname "$(readlink -f "$(command -v node)")")")
NAPI_ADDON="$WORK/napi/build/Release/fuse3_floor.node"
mkdir -p "$WORK/napi"
cp "$ROOT/bench/spike/napi-fuse3/binding.gyp" "$ROOT/bench/spike/napi-fuse3/fuse3-floor-napi.c" "$WORK/napi/"
if ! (cd "$WORK/napi" && node "$NODE_GYP" rebuild --nodedir="$NODE_PREFIX" >build.log 2>&1); then
  echo "# N-API variants skipped: node-gyp build failed ($(tail -1 "$WORK/napi/build.log"))" >&2
  NAPI_ADDON=""
fi

# variant name | server kind | extra args | read_ahead_kb to set on the mount's bdi (- = leave the default)
VARIANTS=(
  "fuse-native|native||-"
  "fuse-native ra=1M|native||1024"
  "libfuse3 defaults|fuse3||-"
  "libfuse3 128K|fuse3|--req-kb 128|-"
  "libfuse3 1M|fuse3||1024"
  "libfuse3 1M single|fuse3|--single|1024"
  "libfuse3+JS (N-API)|napi||-"
  "libfuse3+JS (N-API) 1M|napi||1024"
)
if [ -z "$NAPI_ADDON" ]; then
  mapfile -t VARIANTS < <(printf '%s\n' "${VARIANTS[@]}" | grep -v '|napi|')
fi

TCK=$(getconf CLK_TCK)
# CPU seconds (user + system, all threads) of a process so far: less sensitive to a shared machine's
# load than wall time. For a FUSE server this includes the kernel's copy of its replies into the page cache.
cpu_of() { awk -v t="$TCK" '{ sub(/^.*\) /, ""); printf "%.2f", ($12 + $13) / t }' "/proc/$1/stat"; }
bdi_of() { awk -v m="$1" '$5 == m { print $3 }' /proc/self/mountinfo; }

# trial NAME KIND ARGS RA: appends "NAME|seconds most_common_read_kib server_cpu_seconds" to $RESULTS. Runs in this
# shell (no $(...) subshell) so PIDS and MNTS stay visible to the EXIT trap.
trial() {
  local name=$1 kind=$2 args=$3 ra=$4 n=${#MNTS[@]}
  local dir="$WORK/t$n" pid dev t0 t1 c0 c1 i mode
  mkdir -p "$dir/mnt"
  MNTS+=("$dir/mnt")
  if [ "$kind" = native ]; then
    FUSE_FLOOR_STATS="$dir/stats" node --require "$ROOT/bench/spike/count-reads.cjs" "$SERVER_JS" "$dir/mnt" "$SIZE" \
      >"$dir/out" 2>"$dir/err" &
  elif [ "$kind" = napi ]; then
    # shellcheck disable=SC2086
    node "$ROOT/bench/spike/napi-fuse3-floor.cjs" "$NAPI_ADDON" "$dir/mnt" "$SIZE" $args --stats "$dir/stats" \
      >"$dir/out" 2>"$dir/err" &
  else
    # shellcheck disable=SC2086
    "$WORK/fuse3-floor" "$dir/mnt" "$SIZE" $args --stats "$dir/stats" >"$dir/out" 2>"$dir/err" &
  fi
  pid=$!
  PIDS+=("$pid")
  for i in $(seq 300); do
    grep -q mounted "$dir/out" 2>/dev/null && break
    kill -0 "$pid" 2>/dev/null || { echo "$name: server exited: $(cat "$dir/err")" >&2; return 1; }
    sleep 0.1
  done
  grep -q mounted "$dir/out" || { echo "$name: not mounted after 30 s" >&2; return 1; }
  stat "$dir/mnt/blob" >/dev/null
  dev=$(bdi_of "$dir/mnt")
  if [ "$ra" != - ]; then echo "$ra" >"/sys/class/bdi/$dev/read_ahead_kb"; fi
  c0=$(cpu_of "$pid")
  t0=$(date +%s.%N)
  if [ "$READER" = cat ]; then cat "$dir/mnt/blob" >/dev/null; else dd if="$dir/mnt/blob" of=/dev/null bs=1M status=none; fi
  t1=$(date +%s.%N)
  c1=$(cpu_of "$pid")
  kill -TERM "$pid"
  for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if awk -v m="$dir/mnt" '$5 == m { found = 1 } END { exit !found }' /proc/self/mountinfo; then
    "$UMOUNT" -uz "$dir/mnt"
  fi
  [ -f "$dir/stats" ] || { echo "$name: the server wrote no stats: $(cat "$dir/err")" >&2; return 1; }
  grep -q " bytes=$SIZE\$" "$dir/stats" || { echo "$name: server served $(grep bytes= "$dir/stats"), want $SIZE" >&2; return 1; }
  mode=$(awk -F= '$1 == "mode_kib" { print $2 }' "$dir/stats")
  cp "$dir/stats" "$WORK/stats-${name// /_}"
  awk -v t0="$t0" -v t1="$t1" -v mode="$mode" -v c="$(awk -v a="$c0" -v b="$c1" 'BEGIN { print b - a }')" \
    'BEGIN { printf "%.3f %s %.2f\n", t1 - t0, mode, c }' >"$dir/result"
  echo "  $name: $(cat "$dir/result")"
  echo "$name|$(cat "$dir/result")" >>"$RESULTS"
}

echo "# $(date -u +%FT%TZ) $(uname -r) $(nproc) cpus, file $SIZE bytes, $ROUNDS rounds, reader $READER, libfuse3 $(pkg-config --modversion fuse3)"
RESULTS="$WORK/results"
: >"$RESULTS"
nv=${#VARIANTS[@]}
for r in $(seq "$ROUNDS"); do
  echo "# round $r: $(uptime)"
  for k in $(seq 0 $((nv - 1))); do
    IFS='|' read -r name kind args ra <<<"${VARIANTS[$(((k + r - 1) % nv))]}"
    trial "$name" "$kind" "$args" "$ra"
  done
done

echo
for f in "$WORK"/stats-*; do
  echo "# ${f#"$WORK"/stats-}: $(head -1 "$f"); $(grep '^size ' "$f" | tr '\n' ';')"
done
echo
echo "| variant | median s | GB/s | vs fuse-native | server CPU s (median) | read request size (most common, KiB) |"
echo "|---|---|---|---|---|---|"
base=""
for v in "${VARIANTS[@]}"; do
  IFS='|' read -r name _ _ _ <<<"$v"
  read -r med mode < <(awk -F'|' -v n="$name" '$1 == n { print $2 }' "$RESULTS" | sort -n -k1,1 |
    awk '{ s[NR] = $1; m[NR] = $2 } END { i = int((NR + 1) / 2); print s[i], m[i] }')
  cpu=$(awk -F'|' -v n="$name" '$1 == n { split($2, f, " "); print f[3] }' "$RESULTS" | sort -n |
    awk '{ c[NR] = $1 } END { print c[int((NR + 1) / 2)] }')
  [ -z "$base" ] && base=$med
  awk -v n="$name" -v s="$med" -v b="$base" -v size="$SIZE" -v m="$mode" -v c="$cpu" \
    'BEGIN { printf "| %s | %.3f | %.2f | %.2fx | %s | %s |\n", n, s, size / s / 1e9, b / s, c, m }'
done
