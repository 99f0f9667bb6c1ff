#!/usr/bin/env bash
# fuse-passthrough.sh: what FUSE passthrough (kernel >= 6.9, libfuse >= 3.17) does to a read of a
# complete file, measured with libfuse's own example/passthrough_hp (a spike, not part of `npm run bench`).
# Debian 12 has no libfuse >= 3.17, so this needs a libfuse source tree (a git checkout or release tarball
# of fuse-3.17.x or later) and builds it with meson into a temp dir; nothing is installed system-wide
# except meson/ninja-build when missing. Run as root (passthrough needs CAP_SYS_ADMIN):
#   bash bench/spike/fuse-passthrough.sh LIBFUSE_SRC [ROUNDS] [SIZE_BYTES]
# Every trial mounts passthrough_hp afresh over a directory holding one SIZE-byte file and times
# `dd bs=1M` of it through the mount; "warm" = the backing file is in the page cache (read once before),
# "cold" = its pages were dropped with POSIX_FADV_DONTNEED (this file only, nothing global). The READ
# requests that reached the daemon are counted from passthrough_hp --debug-fuse in a separate short
# untimed probe (64 MiB), because debug output would slow the timed runs.
set -euo pipefail

SRC=${1:?usage: fuse-passthrough.sh LIBFUSE_SRC [ROUNDS] [SIZE_BYTES]}
ROUNDS=${2:-3}
SIZE=${3:-1073741824}
SRC=$(cd "$SRC" && pwd)
[ "$(id -u)" = 0 ] || { echo "fuse-passthrough.sh: run as root (FUSE passthrough needs CAP_SYS_ADMIN)" >&2; exit 2; }
[ -f "$SRC/example/passthrough_hp.cc" ] && grep -q fuse_passthrough_open "$SRC/include/fuse_lowlevel.h" ||
  { echo "fuse-passthrough.sh: $SRC is not a libfuse >= 3.17 source tree (no fuse_passthrough_open)" >&2; exit 2; }
command -v meson >/dev/null && command -v ninja >/dev/null || apt-get install -y meson ninja-build >&2
if command -v fusermount3 >/dev/null; then UMOUNT=fusermount3; else UMOUNT=fusermount; fi

WORK=$(mktemp -d /tmp/regfs-fuse-passthrough.XXXXXX)
PIDS=()
MNTS=()
mounted() { awk -v m="$1" '$5 == m { found = 1 } END { exit !found }' /proc/self/mountinfo; }
cleanup() {
  local p m i
  for p in "${PIDS[@]}"; do
    if kill -0 "$p" 2>/dev/null; then
      kill -TERM "$p" 2>/dev/null || true
      for i in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null || true
    fi
  done
  for m in "${MNTS[@]}"; do mounted "$m" && { "$UMOUNT" -uz "$m" 2>/dev/null || true; }; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

meson setup "$WORK/build" "$SRC" -Dexamples=true -Dutils=false -Dtests=false --buildtype=release >"$WORK/meson.log" 2>&1 ||
  { tail -20 "$WORK/meson.log" >&2; exit 1; }
ninja -C "$WORK/build" example/passthrough_hp >"$WORK/ninja.log" 2>&1 || { tail -20 "$WORK/ninja.log" >&2; exit 1; }
PHP="$WORK/build/example/passthrough_hp"
VERSION=$(awk -F"'" '/^ *version:/ { print $2; exit }' "$SRC/meson.build")

mkdir -p "$WORK/src"
dd if=/dev/zero of="$WORK/src/blob" bs=1M count=$((SIZE / 1048576)) status=none
sync "$WORK/src/blob"
drop() { python3 -c 'import os,sys; fd=os.open(sys.argv[1],os.O_RDONLY); os.posix_fadvise(fd,0,0,os.POSIX_FADV_DONTNEED); os.close(fd)' "$1"; }
warm() { cat "$WORK/src/blob" >/dev/null; }

# start MODEARGS: mounts passthrough_hp on a fresh mountpoint, sets $MNT and $PID
start() {
  local n=${#MNTS[@]} i
  MNT="$WORK/m$n"
  mkdir "$MNT"
  MNTS+=("$MNT")
  # shellcheck disable=SC2086
  "$PHP" --foreground $1 "$WORK/src" "$MNT" >"$MNT.out" 2>"$MNT.err" &
  PID=$!
  PIDS+=("$PID")
  for i in $(seq 100); do mounted "$MNT" && [ -e "$MNT/blob" ] && return 0; sleep 0.1; done
  echo "passthrough_hp did not mount: $(cat "$MNT.err")" >&2
  return 1
}
stop() {
  local i
  kill -TERM "$PID"
  for i in $(seq 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
  mounted "$MNT" && "$UMOUNT" -uz "$MNT"
  return 0
}
bdi_ra() { echo "$2" >"/sys/class/bdi/$(awk -v m="$1" '$5 == m { print $3 }' /proc/self/mountinfo)/read_ahead_kb"; }

# The no-passthrough rows run passthrough_hp --single: its multi-threaded loop took 4-11 s per GiB on
# this 2-core machine (not investigated), the single-threaded one 0.4-0.5 s, which is the fair comparison.
# variant name | passthrough_hp args (- = read the backing file directly) | cache state | read_ahead_kb
VARIANTS=(
  "local file, warm|-|warm|-"
  "passthrough, warm||warm|-"
  "no passthrough, warm|--nopassthrough --single|warm|-"
  "no passthrough, 1M requests, warm|--nopassthrough --single|warm|1024"
  "local file, cold|-|cold|-"
  "passthrough, cold||cold|-"
)

echo "# $(date -u +%FT%TZ) $(uname -r), libfuse $VERSION passthrough_hp, file $SIZE bytes, $ROUNDS rounds"
for args in "" "--nopassthrough"; do
  start "--debug-fuse $args"
  dd if="$MNT/blob" of=/dev/null bs=1M count=64 status=none
  stop
  echo "# probe ${args:-passthrough}: READ requests for 64 MiB: $(grep -c 'opcode: READ ' "$MNT.err" || true)"
done

RESULTS="$WORK/results"
: >"$RESULTS"
nv=${#VARIANTS[@]}
for r in $(seq "$ROUNDS"); do
  echo "# round $r: $(uptime)"
  for k in $(seq 0 $((nv - 1))); do
    IFS='|' read -r name args cache ra <<<"${VARIANTS[$(((k + r - 1) % nv))]}"
    if [ "$cache" = warm ]; then warm; else drop "$WORK/src/blob"; fi
    file="$WORK/src/blob"
    if [ "$args" != - ]; then
      start "$args"
      file="$MNT/blob"
      [ "$ra" != - ] && bdi_ra "$MNT" "$ra"
    fi
    t0=$(date +%s.%N)
    dd if="$file" of=/dev/null bs=1M status=none
    t1=$(date +%s.%N)
    [ "$args" != - ] && stop
    s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
    echo "  $name: $s"
    echo "$name|$s" >>"$RESULTS"
  done
done

echo
echo "| variant | median s | GB/s |"
echo "|---|---|---|"
for v in "${VARIANTS[@]}"; do
  IFS='|' read -r name _ _ _ <<<"$v"
  med=$(awk -F'|' -v n="$name" '$1 == n { print $2 }' "$RESULTS" | sort -n | awk '{ s[NR] = $1 } END { print s[int((NR + 1) / 2)] }')
  awk -v n="$name" -v s="$med" -v size="$SIZE" 'BEGIN { printf "| %s | %.3f | %.2f |\n", n, s, size / s / 1e9 }'
done
