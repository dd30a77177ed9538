#!/usr/bin/env bash
# Peak RSS and throughput of pushing and pulling one large file through the
# release CLI and relay on loopback (issue: large files, flat memory).
#   scripts/large-file-rss.sh [SIZE_MIB]      (default 1024)
# Prints wall time, MB/s and peak RSS (from /usr/bin/time -v) of the push,
# the pull and the relay, next to a baseline measured in the same run: a
# plain `cp` of the file and a `b3sum`-equivalent read (cat > /dev/null).
set -euo pipefail
size_mib=${1:-1024}
root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/target/release"
[ -x "$bin/sync-cli" ] && [ -x "$bin/sync-relay" ] || cargo build --release -p sync-relay -p sync-cli --manifest-path "$root/Cargo.toml"
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
cd "$work"
head -c $((size_mib * 1024 * 1024)) /dev/urandom > big.bin
/usr/bin/time -v -o relay.time "$bin/sync-relay" --data-dir rd --quic-bind 127.0.0.1:0 --http-bind 127.0.0.1:0 \
  --config <(printf '[access]\nmode = "open"\n[limits]\nmax_group_storage = %d\nmax_storage = %d\n[rate_limits]\npush_bytes_per_s = 4294967295\npush_bytes_burst = 4294967295\n' $((4 << 30)) $((8 << 30))) 2> relay.log &
relay_pid=$!
for _ in $(seq 100); do grep -q 'relay address' relay.log && break; sleep 0.1; done
addr=$(grep -o 'relay address: [^ ]*' relay.log | cut -d' ' -f3)
invite=$("$bin/sync-cli" --home a init --relay "$addr" 2>/dev/null)
# A one-time invite: B waits while A answers.
"$bin/sync-cli" --home b join "$invite" 2>/dev/null & join_pid=$!
while kill -0 "$join_pid" 2>/dev/null; do "$bin/sync-cli" --home a invite --answer --quiet; sleep 0.5; done
wait "$join_pid"
sync
/usr/bin/time -v -o cp.time cp big.bin copy.bin; rm copy.bin
/usr/bin/time -v -o read.time cat big.bin > /dev/null
/usr/bin/time -v -o push.time "$bin/sync-cli" --home a push big.bin > /dev/null
/usr/bin/time -v -o pull.time "$bin/sync-cli" --home b pull --out out > /dev/null
cmp -s big.bin out/big.bin && same=identical || same=DIFFERENT
kill -TERM "$(pgrep -P "$relay_pid" sync-relay || echo "$relay_pid")" 2>/dev/null || true
wait "$relay_pid" 2>/dev/null || true
secs() { awk -F': ' '/Elapsed/ {n=split($2,t,":"); s=0; for(i=1;i<=n;i++) s=s*60+t[i]; print s}' "$1.time"; }
rss() { awk -F': ' '/Maximum resident/ {printf "%.1f", $2/1024}' "$1.time"; }
mbps() { awk -v m="$size_mib" -v s="$1" 'BEGIN {if (s > 0) printf "%.0f", (m*1.048576)/s; else printf "n/a (under 0.01 s)"}'; }
printf '| %s MiB file | wall s | MB/s | peak RSS MiB |\n|---|---|---|---|\n' "$size_mib"
for p in cp read push pull; do printf '| %s | %s | %s | %s |\n' "$p" "$(secs $p)" "$(mbps "$(secs $p)")" "$(rss $p)"; done
printf '| relay (whole run) | | | %s |\n' "$(rss relay)"
echo "received file: $same"
