#!/bin/bash
# Per-session relay heap by component (BENCHMARKS.md "Idle sessions"):
# run `sync-bench idle` against a relay on the system allocator under
# heaptrack, then charge the heap at its peak to the crate that grew it.
#
#   scripts/idle-heaptrack.sh [SESSIONS]     (default 1000; debug build)
#
# The RSS columns of its table are the wrapper's, not the relay's: read the
# heap figures. Needs heaptrack (Debian `heaptrack`). Leaves its files in a temp dir it
# prints; nothing else.
set -euo pipefail
sessions=${1:-1000}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build -q -p sync-bench
out=$(mktemp -d)
# A relay without jemalloc, so heaptrack sees every allocation.
cargo build -q -p sync-relay --no-default-features
cp target/debug/sync-relay "$out/relay-sysalloc"
cp target/debug/sync-bench "$out/sync-bench"
cargo build -q -p sync-relay   # put the default (jemalloc) relay back
cat > "$out/sync-relay" <<WRAP
#!/bin/bash
echo \$\$ > "$out/relay.pid"
exec heaptrack -o "$out/relay.heaptrack" "$out/relay-sysalloc" "\$@"
WRAP
chmod +x "$out/sync-relay"
# The bench ends the relay with SIGKILL, which ends heaptrack's wrapper but
# not the relay under it: stop that one (by its pid) with SIGTERM.
"$out/sync-bench" idle --sessions "$sessions" --processes 2 | grep '^|'
relay=$(pgrep -f "^$out/relay-sysalloc" || true)
if [ -n "$relay" ]; then kill -TERM "$relay"; while kill -0 "$relay" 2>/dev/null; do sleep 0.2; done; fi
# heaptrack_interpret finishes writing once the relay is gone.
while pgrep -f "heaptrack_interpret.*$out" >/dev/null || [ ! -s "$out/relay.heaptrack.zst" ]; do sleep 0.5; done
heaptrack_print -f "$out/relay.heaptrack.zst" --print-peaks 0 --print-allocators 0 \
  --print-temporary 0 --print-leaks 0 --print-flamegraph "$out/peak.folded" \
  --flamegraph-cost-type peak >/dev/null
python3 scripts/heap-by-component.py "$out/peak.folded" "$sessions"
echo "files: $out"
