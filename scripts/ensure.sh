#!/bin/sh
# Installs whatever regfs needs that is missing, then builds; a second run does nothing.
# Used by `npm start`, `npm test` and `npm run bench`.
set -eu
cd "$(dirname "$0")/.."

DEBS="docker-registry skopeo libfuse2 fuse apache2-utils attr openssl curl systemd nginx umoci fio"
missing=""
for p in $DEBS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "regfs: missing Debian packages:$missing; run as root or: sudo apt-get install -y$missing" >&2
    exit 1
  fi
  echo "regfs: installing Debian packages:$missing" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q $missing >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q $missing >/dev/null; }
fi

# npm packages: reinstall only when the lock file changed since the last install.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "regfs: installing npm packages (npm ci)" >&2
  npm ci --no-audit --no-fund >/dev/null
fi

# Build only when a source file is newer than the last build.
stamp=dist/.build-stamp
if [ ! -f "$stamp" ] || [ -n "$(find types util registry cache staging mount daemon cli lab test bench scripts tsconfig.json package.json -newer "$stamp" \( -name '*.ts' -o -name '*.json' \) -print -quit 2>/dev/null)" ]; then
  echo "regfs: building" >&2
  # A clean build: a stale dist/ file (a removed test or module) must never run.
  rm -rf dist
  ./node_modules/.bin/tsc -p tsconfig.json
  touch "$stamp"
fi
