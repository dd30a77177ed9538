#!/usr/bin/env bash
# Build the relay image from ./Dockerfile and check it as an operator would
# (issue 17). Not in CI: 8-15 minutes on 2 cores, most of it the image build.
#
#   scripts/docker-smoke.sh [--make-base-images] [--no-cache] [--no-build]
#
# --no-build checks an image already built (IMAGE) without building it.
# --no-cache is passed to the build (podman here keeps no layer cache anyway).
#
# Uses docker when a Docker engine answers, podman otherwise (installed with
# apt-get when missing, as root). Every check prints one line,
# `PASS name detail` or `FAIL name detail`; other lines start with `--`.
# Exits 1 when any check failed, 2 when it could not start. The container(s),
# the volume and the temporary directory are removed on exit; the image
# (IMAGE, default localhost/0k-sync-relay:smoke) and the base images are kept.
#
# Base images: the Dockerfile builds FROM rust:<version>-slim-bookworm and runs
# FROM debian:bookworm-slim. Where they are missing (or with
# --make-base-images) the script makes local stand-ins instead of pulling:
# debian:bookworm-slim is `debootstrap --variant=minbase bookworm` imported as
# an image, and rust:<version>-slim-bookworm is that plus gcc, libc6-dev,
# ca-certificates (with the host's own CAs from /usr/local/share/ca-certificates)
# and the host's Rust toolchain of that version (from rustup). This needs
# root, debootstrap (installed when missing) and the Debian archive
# (DEBIAN_MIRROR, default http://deb.debian.org/debian).
#
# The build runs on the host's network (--network=host) so that cargo inside
# reaches crates.io exactly as the host's cargo does; with podman the host's
# CA bundle (CA_BUNDLE, default CARGO_HTTP_CAINFO, SSL_CERT_FILE or
# /etc/ssl/certs/ca-certificates.crt) is mounted over the build container's
# bundle, for machines behind a TLS-intercepting proxy.
#
# Where crun refuses the host's cgroups (a v1/v2 hybrid) or podman cannot set
# its default rlimits (no CAP_SYS_RESOURCE), as on this project's machines, the
# script runs podman with runc and the host's limits, and says so.
#
# The round trip uses the host's release sync-cli (SYNC_CLI, default
# target/release/sync-cli, built with `cargo build --release -p sync-cli`;
# cargo does nothing when it is current).
#
# Environment: ENGINE (docker|podman), IMAGE, SYNC_CLI, CA_BUNDLE, DEBIAN_MIRROR.
set -uo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
make_base=0
no_build=0
no_cache=()
for arg in "$@"; do
  case $arg in
    --make-base-images) make_base=1 ;;
    --no-cache) no_cache=(--no-cache) ;;
    --no-build) no_build=1 ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done

IMAGE=${IMAGE:-localhost/0k-sync-relay:smoke}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CA_BUNDLE=${CA_BUNDLE:-${CARGO_HTTP_CAINFO:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}}

fails=0
checks=0
pass() { checks=$((checks + 1)); printf 'PASS %s %s\n' "$1" "${2:-}"; }
fail() { checks=$((checks + 1)); fails=$((fails + 1)); printf 'FAIL %s %s\n' "$1" "${2:-}"; }
check() { # check NAME DETAIL COMMAND...: PASS when COMMAND succeeds
  local name=$1 detail=$2; shift 2
  if "$@"; then pass "$name" "$detail"; else fail "$name" "$detail"; fi
}
note() { printf -- '-- %s\n' "$*"; }
die() { printf -- '-- cannot run: %s\n' "$*"; exit 2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

apt_install() { # apt_install PACKAGE...: install Debian packages, saying so
  [ "$(id -u)" = 0 ] || die "$* missing and not root: install $* (apt-get install $*)"
  note "installing $* with apt-get (not on this machine)"
  if ! { DEBIAN_FRONTEND=noninteractive apt-get update -q \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"; } >/dev/null; then
    die "apt-get install $* failed"
  fi
}

# ---- engine ---------------------------------------------------------------
if [ -n "${ENGINE:-}" ]; then
  engine=$ENGINE
elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  engine=docker
else
  command -v podman >/dev/null 2>&1 || apt_install podman
  engine=podman
fi
command -v "$engine" >/dev/null 2>&1 || die "no $engine"
engine_opts=() # global options of every engine call (podman: --runtime)
run_opts=()    # options of every container run and build step (podman: --ulimit)
eng() { "$engine" "${engine_opts[@]}" "$@"; }
command -v curl >/dev/null 2>&1 || apt_install curl
note "engine: $engine ($($engine --version 2>&1 | head -1)); image $IMAGE"

work=$(mktemp -d "${TMPDIR:-/tmp}/0k-docker-smoke.XXXXXX")
tag=0k-smoke-$$
c1=$tag-a
c2=$tag-b
vol=$tag-data
cleanup() {
  eng rm -f "$c1" "$c2" >/dev/null 2>&1
  eng volume rm -f "$vol" >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- base images ----------------------------------------------------------
build_from=$(awk '/^FROM / { print $2; exit }' "$root/Dockerfile")   # rust:1.95-slim-bookworm
run_from=$(awk '/^FROM / { f = $2 } END { print f }' "$root/Dockerfile") # debian:bookworm-slim
rust_want=${build_from#rust:}
rust_want=${rust_want%%-*}
qualify() { case $1 in */*) echo "docker.io/$1" ;; *) echo "docker.io/library/$1" ;; esac; }
has_image() { eng image inspect "$1" >/dev/null 2>&1; }

make_base_images() {
  [ "$(id -u)" = 0 ] || die "making base images needs root (debootstrap, chroot)"
  command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
  local sysroot
  sysroot=$(rustc "+$rust_want" --print sysroot 2>/dev/null || rustc --print sysroot 2>/dev/null) \
    || die "no host Rust toolchain (rustc) to put in the $build_from stand-in"
  "$sysroot/bin/rustc" --version | grep -q "^rustc $rust_want" \
    || die "host toolchain $sysroot is $("$sysroot/bin/rustc" --version), the Dockerfile wants $rust_want (rustup toolchain install $rust_want)"
  local rootfs=$work/rootfs t
  t=$(now)
  note "making base image stand-ins (no registry is used): debootstrap --variant=minbase bookworm from $DEBIAN_MIRROR"
  debootstrap --variant=minbase bookworm "$rootfs" "$DEBIAN_MIRROR" >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log"; die "debootstrap failed"; }
  chroot "$rootfs" apt-get clean
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin
  : >"$rootfs/etc/resolv.conf"
  tar -C "$rootfs" --numeric-owner -cf - . \
    | eng import --change 'CMD ["bash"]' - "$(qualify "$run_from")" >"$work/import.log" 2>&1 \
    || die "$engine import of $run_from failed"
  pass base-image-debian "$(qualify "$run_from") from debootstrap in $(since "$t") s"

  t=$(now)
  # The rust stand-in: the same tree plus a C toolchain, CA certificates (the
  # host's own CAs included, as an image built here would need them) and the
  # host's Rust toolchain without its docs, laid out like the official image
  # (cargo and rustc on PATH, CARGO_HOME=/usr/local/cargo).
  cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
  if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    mkdir -p "$rootfs/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
  fi
  { chroot "$rootfs" apt-get update -q \
      && DEBIAN_FRONTEND=noninteractive chroot "$rootfs" apt-get install -y -q --no-install-recommends \
        gcc libc6-dev ca-certificates; } >"$work/apt-rust.log" 2>&1 \
    || { tail -20 "$work/apt-rust.log"; die "installing gcc, libc6-dev in the rust stand-in failed"; }
  chroot "$rootfs" apt-get clean
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin
  : >"$rootfs/etc/resolv.conf"
  mkdir -p "$rootfs/usr/local/rust" "$rootfs/usr/local/cargo"
  for d in bin lib libexec etc; do
    [ -d "$sysroot/$d" ] && cp -a "$sysroot/$d" "$rootfs/usr/local/rust/"
  done
  tar -C "$rootfs" --numeric-owner -cf - . \
    | eng import \
        --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV CARGO_HOME=/usr/local/cargo' \
        --change "ENV RUST_VERSION=$("$sysroot/bin/rustc" --version | cut -d' ' -f2)" \
        --change 'CMD ["bash"]' \
        - "$(qualify "$build_from")" >"$work/import.log" 2>&1 \
    || die "$engine import of $build_from failed"
  rm -rf "$rootfs"
  pass base-image-rust "$(qualify "$build_from") = debian + gcc, libc6-dev + host $("$sysroot/bin/rustc" --version | cut -d' ' -f1-2) in $(since "$t") s"
}

probe_image=$(qualify "$run_from")
if [ "$no_build" = 1 ] && [ "$make_base" = 0 ]; then
  probe_image=$IMAGE # no base image needed
elif [ "$make_base" = 1 ] || ! has_image "$(qualify "$build_from")" || ! has_image "$(qualify "$run_from")"; then
  [ "$make_base" = 1 ] || note "base images $build_from / $run_from not found: making local stand-ins"
  make_base_images
else
  note "base images present: $(qualify "$build_from"), $(qualify "$run_from") (--make-base-images remakes them)"
fi

# ---- can the engine run a container here? ----------------------------------
# Two limits of some sandboxes (seen on this project's machines): crun refuses
# a cgroup v1/v2 hybrid host ("cgroups in hybrid mode not supported"), where
# runc works; and without CAP_SYS_RESOURCE podman's default rlimits (nofile
# 1048576, nproc) cannot be set, so the host's own are passed instead.
probe() { eng run --rm --network=none "${run_opts[@]}" --entrypoint true "$probe_image" 2>&1; }
if [ "$engine" = podman ]; then
  for _ in 1 2 3; do
    out=$(probe) && break
    if grep -q 'hybrid mode' <<<"$out" && [ ${#engine_opts[@]} = 0 ]; then
      command -v runc >/dev/null 2>&1 || apt_install runc
      engine_opts=(--runtime runc)
      note "crun refuses this host's hybrid cgroups: using podman --runtime runc"
    elif grep -qi 'rlimit' <<<"$out" && [ ${#run_opts[@]} = 0 ]; then
      nofile=$(ulimit -Hn); [ "$nofile" = unlimited ] && nofile=1048576
      run_opts=(--ulimit "nofile=$nofile:$nofile" --ulimit nproc=4096:4096)
      note "podman cannot raise rlimits here (no CAP_SYS_RESOURCE): running with ${run_opts[*]}"
    else
      break
    fi
  done
  probe >/dev/null || die "podman cannot run a container here: $(probe | tail -3)"
fi

# ---- build ----------------------------------------------------------------
if [ "$no_build" = 1 ]; then
  has_image "$IMAGE" || die "--no-build: no image $IMAGE"
  note "--no-build: checking the existing $IMAGE"
else
  # The build stage's target/ alone is ~1.5 GB: on a full disk the build
  # fails only when that layer is written, with an obscure error.
  store=$(eng info -f '{{.Store.GraphRoot}}' 2>/dev/null || eng info -f '{{.DockerRootDir}}' 2>/dev/null)
  free_kb=$(df -Pk "${store:-/var/lib}" 2>/dev/null | awk 'NR == 2 { print $4 }')
  [ "${free_kb:-0}" -ge $((3 * 1024 * 1024)) ] \
    || die "$((${free_kb:-0} / 1024)) MB free under ${store:-/var/lib}: the build needs about 3 GB"
  build=(build --network=host "${run_opts[@]}" -t "$IMAGE" -f "$root/Dockerfile" "${no_cache[@]}")
  if [ "$engine" = podman ]; then
    # docker format keeps HEALTHCHECK (OCI images have no field for it). No
    # layer cache: the build stage (~2 GB with its target/) is not kept, and
    # every run builds what an operator's first build does.
    build+=(--pull=never --format docker --layers=false)
    [ -f "$CA_BUNDLE" ] && build+=(-v "$(readlink -f "$CA_BUNDLE"):/etc/ssl/certs/ca-certificates.crt:ro")
  else
    # The legacy builder needs no frontend image from a registry (BuildKit
    # fetches one for the `# syntax=` line); the Dockerfile uses nothing else
    # of BuildKit's.
    export DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0}
  fi
  note "building: $engine ${engine_opts[*]} ${build[*]} $root"
  t=$(now)
  if eng "${build[@]}" "$root" >"$work/build.log" 2>&1; then
    size=$(eng image inspect -f '{{.Size}}' "$IMAGE")
    pass build "$IMAGE in $(since "$t") s, image $(awk -v s="$size" 'BEGIN { printf "%.1f MB", s / 1e6 }')"
  else
    tail -40 "$work/build.log"
    fail build "after $(since "$t") s (last lines above)"
    printf -- '-- %d checks, %d failed\n' "$checks" "$fails"
    exit 1
  fi
fi

inspect() { eng image inspect -f "$1" "$IMAGE" 2>/dev/null; }
user=$(inspect '{{.Config.User}}')
check image-user "Config.User=$user" test "$user" = 10001:10001
hc=$(inspect '{{if .Config.Healthcheck}}{{join .Config.Healthcheck.Test " "}}{{end}}')
check image-healthcheck "HEALTHCHECK ${hc:-missing}" test "$hc" = "CMD sync-relay healthcheck"
bin_size=$(eng run --rm "${run_opts[@]}" --entrypoint stat "$IMAGE" -c %s /usr/local/bin/sync-relay 2>/dev/null)
check binary-size "/usr/local/bin/sync-relay $(awk -v s="${bin_size:-0}" 'BEGIN { printf "%.1f MB", s / 1e6 }') (stripped dist profile; release with line tables was 118 MB)" \
  test "${bin_size:-0}" -gt 1000000 -a "${bin_size:-0}" -lt 60000000

# ---- the host's sync-cli --------------------------------------------------
if [ -n "${SYNC_CLI:-}" ]; then
  cli=$SYNC_CLI
else
  cli=$root/target/release/sync-cli
  note "cargo build --release -p sync-cli (nothing to do when current)"
  nice -n 10 cargo build -q --release -p sync-cli --manifest-path "$root/Cargo.toml" >"$work/cli-build.log" 2>&1 \
    || { tail -20 "$work/cli-build.log"; die "building sync-cli failed"; }
fi
[ -x "$cli" ] || die "no sync-cli at $cli"

# ---- run ------------------------------------------------------------------
free_port() { # free_port tcp|udp: an unused port on 127.0.0.1
  local p flag
  [ "$1" = udp ] && flag=-u || flag=-t
  for _ in $(seq 50); do
    p=$((20000 + RANDOM % 40000))
    ss -Hln "$flag" "sport = :$p" 2>/dev/null | grep -q . || { echo "$p"; return; }
  done
  return 1
}
http_port=$(free_port tcp) || die "no free TCP port"
quic_port=$(free_port udp) || die "no free UDP port"
note "ports: HTTP 127.0.0.1:$http_port -> 8080/tcp, QUIC 127.0.0.1:$quic_port -> 4433/udp; volume $vol"
eng volume create "$vol" >/dev/null || die "volume create failed"

start() { # start NAME [ENGINE OPTIONS...]
  local name=$1; shift
  eng run -d --name "$name" \
    -p "127.0.0.1:$http_port:8080/tcp" -p "127.0.0.1:$quic_port:4433/udp" \
    -v "$vol:/data" "${run_opts[@]}" "$@" "$IMAGE" >"$work/$name.id" 2>"$work/$name.err"
}
health() { # health NAME: wait up to 60 s for GET /health 200; body in $work/health.json
  local code=000
  for _ in $(seq 120); do
    code=$(curl -s -m 2 -o "$work/health.json" -w '%{http_code}' "http://127.0.0.1:$http_port/health" 2>/dev/null)
    [ "$code" = 200 ] && break
    [ "$(eng inspect -f '{{.State.Running}}' "$1" 2>/dev/null)" = true ] || break
    sleep 0.5
  done
  echo "$code"
}
warnings() { sed -n 's/.*"warnings":\[\(.*\)\].*/\1/p' "$work/health.json"; }
node_of() { sed -n 's/.*"node_id":"\([0-9a-f]*\)".*/\1/p' "$work/health.json"; }
sh_in() { eng exec "$c1" sh -c "$1" 2>&1; }
stop() { # stop NAME: prints "EXITCODE SECONDS"
  local t; t=$(now)
  eng stop --time 20 "$1" >/dev/null 2>&1
  echo "$(eng inspect -f '{{.State.ExitCode}}' "$1" 2>/dev/null) $(since "$t")"
}
# The volume's files, seen from a throwaway container as the relay's user.
wal_state() {
  # shellcheck disable=SC2016 # expanded by the container's shell
  eng run --rm "${run_opts[@]}" --user 10001:10001 -v "$vol:/data" --entrypoint sh "$IMAGE" -c \
    'if [ -e /data/relay.db-wal ]; then echo "relay.db-wal $(stat -c %s /data/relay.db-wal) bytes"; else echo "relay.db-wal absent"; fi' 2>>"$work/engine.err"
}

if ! start "$c1"; then
  fail run "$(cat "$work/$c1.err")"
  exit 1
fi
code=$(health "$c1")
if [ "$code" = 200 ]; then pass health "GET /health 200: $(head -c 300 "$work/health.json")"
else
  fail health "GET /health answered $code; container log:"; eng logs "$c1" 2>&1 | tail -20
  exit 1
fi
node=$(node_of)
w=$(warnings)
check health-warning "public_addr unset: warnings names it: ${w:0:160}..." grep -q 'public_addr' <<<"$w"
log_line=$(eng logs "$c1" 2>&1 | grep -m1 -i 'public_addr')
check start-warning "logged at start: ${log_line:0:160}..." test -n "$log_line"
out=$(eng exec "$c1" sync-relay healthcheck 2>&1); rc=$?
check healthcheck-cmd "sync-relay healthcheck in the container: exit $rc" test "$rc" = 0
if [ "$engine" = podman ]; then
  out=$(eng healthcheck run "$c1" 2>&1); rc=$?
  check healthcheck-image "podman healthcheck run (the image's HEALTHCHECK): exit $rc ${out}" test "$rc" = 0
else
  st=starting
  for _ in $(seq 90); do
    st=$(docker inspect -f '{{.State.Health.Status}}' "$c1" 2>/dev/null)
    [ "$st" = starting ] || break; sleep 1
  done
  check healthcheck-image "docker health status (the image's HEALTHCHECK): $st" test "$st" = healthy
fi
ids=$(sh_in 'awk "/^(Name|Uid|Gid):/" /proc/1/status | tr -s "\t " " " | paste -sd";"')
check process-ids "pid 1: $ids" grep -qE '^Name: sync-relay;Uid: 10001 10001 10001 10001;Gid: 10001 10001 10001 10001$' <<<"$ids"
idline=$(sh_in id)
check group-name "id: $idline" grep -q '^uid=10001(relay) gid=10001(relay)' <<<"$idline"
data=$(sh_in 'stat -c "%a %u:%g" /data')
check data-dir "/data mode and owner: $data" test "$data" = "700 10001:10001"
key=$(sh_in 'stat -c "%a %u:%g" /data/relay.key')
check key-file "/data/relay.key mode and owner: $key" test "$key" = "600 10001:10001"

# ---- push/pull round trip with the host's sync-cli ------------------------
addr=$node@127.0.0.1:$quic_port
head -c 3000000 /dev/urandom >"$work/random.bin"
cli() { timeout 120 "$cli" --home "$work/$1" "${@:2}"; }
t=$(now)
if invite=$(cli a init --relay "$addr" 2>"$work/cli.err") && cli b join "$invite" >/dev/null 2>>"$work/cli.err" \
  && cli a push "$work/random.bin" >/dev/null 2>>"$work/cli.err" \
  && cli b pull --out "$work/out-b" >/dev/null 2>>"$work/cli.err"; then
  check round-trip "3,000,000 random bytes pushed by device a, pulled by b via $addr in $(since "$t") s, byte-identical" \
    cmp -s "$work/random.bin" "$work/out-b/random.bin"
else
  fail round-trip "sync-cli against $addr failed: $(tail -3 "$work/cli.err" | tr '\n' ' ')"
fi

# ---- graceful stop --------------------------------------------------------
read -r rc secs <<<"$(stop "$c1")"
check stop "$engine stop --time 20: exit ${rc:-?} after $secs s" \
  awk -v rc="${rc:-1}" -v s="$secs" 'BEGIN { exit !(rc == 0 && s < 10) }'
wal=$(wal_state)
check wal-checkpointed "${wal:-no answer: $(tail -1 "$work/engine.err" 2>/dev/null)}" grep -qE '^relay.db-wal (absent|0 bytes)$' <<<"$wal"
eng rm "$c1" >/dev/null 2>&1

# ---- recreate on the same volume, now with public_addr ---------------------
if ! start "$c2" -e "SYNC_RELAY__NETWORK__PUBLIC_ADDR=127.0.0.1:$quic_port"; then
  fail recreate "$(cat "$work/$c2.err")"
  exit 1
fi
code=$(health "$c2")
check recreate-health "GET /health $code on the same volume" test "$code" = 200
node2=$(node_of)
check same-node-id "node id before $node, after ${node2:-?}" test -n "$node" -a "$node" = "$node2"
w=$(warnings)
check health-no-warning "SYNC_RELAY__NETWORK__PUBLIC_ADDR set: warnings [$w]" test -z "$w"
log_line=$(eng logs "$c2" 2>&1 | grep -m1 'relay address')
check announced-address "${log_line##*INFO }" grep -q "$node@127.0.0.1:$quic_port" <<<"$log_line"
if invite=$(cli a invite 2>"$work/cli.err") && cli c join "$invite" >/dev/null 2>>"$work/cli.err" \
  && cli c pull --out "$work/out-c" >/dev/null 2>>"$work/cli.err"; then
  check data-kept "a new device c pulls the file from the recreated relay, byte-identical" \
    cmp -s "$work/random.bin" "$work/out-c/random.bin"
else
  fail data-kept "sync-cli against the recreated relay failed: $(tail -3 "$work/cli.err" | tr '\n' ' ')"
fi
read -r rc secs <<<"$(stop "$c2")"
check stop-again "$engine stop --time 20: exit ${rc:-?} after $secs s" \
  awk -v rc="${rc:-1}" -v s="$secs" 'BEGIN { exit !(rc == 0 && s < 10) }'
wal=$(wal_state)
check wal-checkpointed-again "${wal:-no answer: $(tail -1 "$work/engine.err" 2>/dev/null)}" grep -qE '^relay.db-wal (absent|0 bytes)$' <<<"$wal"

printf -- '-- %d checks, %d failed\n' "$checks" "$fails"
[ "$fails" = 0 ]
