#!/usr/bin/env bash
# Container smoke test: build the image from the Dockerfile as it is, run the image's own command,
# and check it from the host the way an orchestrator and a client would.
#
#   bash tests/container/smoke.sh            (make smoke; .ci/run calls it after make test)
#
# There is no Docker engine here, so it uses buildah with chroot isolation (see the README,
# "Deployment"): a stand-in for python:3.11-slim is made with debootstrap (Debian bookworm's
# Python 3.11), the Dockerfile is built unchanged on top of it, and the image's CMD runs with the
# host's network. Checked: /healthz, /readyz, /redis/health, a cached request (MISS then HIT)
# against the fake upstream, the image's HEALTHCHECK command (passes while the proxy runs, fails
# once it has stopped), the non-root user, and the drain on SIGTERM (/readyz 503 while /healthz
# stays 200, then exit 0). Chroot isolation has no network or process isolation: port mapping and
# the engine's own health checking are not exercised.
#
# Everything lives in a temporary buildah storage (--root/--runroot) that is unmounted and removed
# at the end, on failure too. Exit status: 0 passed, non-zero failed; 0 with a line
# "SKIPPED: buildah not available: <reason>" only when buildah cannot be used on this machine.
#
# Environment: SMOKE_KEEP=1 keeps the temporary directory (logs, storage) for a post-mortem;
# SMOKE_MIRROR overrides the Debian mirror debootstrap uses; SMOKE_STORAGE_DRIVERS the buildah
# storage drivers tried in turn (default "overlay vfs"); PYTHON the host Python with aiohttp.
set -euo pipefail

cd "$(dirname "$0")/../.."
REPO=$(pwd)
STARTED=$SECONDS
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
IMAGE=localhost/artstory-proxy:smoke
BASE_IMAGE=docker.io/library/python:3.11-slim
SUITE=bookworm # Debian 12: Python 3.11, the release python:3.11-slim is built on

say() { printf 'smoke: %s\n' "$*"; }
elapsed() { echo "$((SECONDS - STARTED)) s"; }
fail() {
  printf 'smoke: FAILED: %s\n' "$*" >&2
  exit 1
}
skip() {
  echo "SKIPPED: buildah not available: $*"
  exit 0
}

# --- Can buildah be used here at all? ---------------------------------------------------------
command -v buildah >/dev/null 2>&1 || skip "the buildah command is not installed (apt-get install buildah debootstrap)"
command -v debootstrap >/dev/null 2>&1 || skip "debootstrap, needed for the stand-in base image, is not installed (apt-get install debootstrap)"
[ "$(id -u)" = 0 ] || skip "this script needs root (buildah mount and debootstrap of the stand-in base image)"
[ -x "$PYTHON" ] || fail "no Python with the project installed at $PYTHON (run make test first, or set PYTHON)"
command -v curl >/dev/null 2>&1 || fail "curl is needed to probe the proxy from the host"

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/artstory-smoke.XXXXXX")
# buildah's own temporary files (image copies during commit) go inside it too, so nothing is left
# behind even when buildah is interrupted. (Only buildah's: chroots have no such directory.)
mkdir "$WORK/tmp"
STORAGE_DRIVER=none
bah() {
  TMPDIR="$WORK/tmp" buildah --root "$WORK/root.$STORAGE_DRIVER" --runroot "$WORK/runroot.$STORAGE_DRIVER" \
    --storage-driver "$STORAGE_DRIVER" "$@"
}

PROXY_PID=
UPSTREAM_PID=
REDIS_PID=
stop_group() { # pid: SIGTERM the process group it leads, then SIGKILL what is left after 10 s
  local pid=$1
  [ -n "$pid" ] || return 0
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
}
cleanup() {
  local status=$?
  set +e
  stop_group "$PROXY_PID"
  for pid in $UPSTREAM_PID $REDIS_PID; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; done
  if [ "$status" != 0 ] && [ -d "$WORK" ]; then
    for log in $(ls -tr "$WORK"/*.log 2>/dev/null); do # the newest, most likely the culprit, last
      [ -s "$log" ] || continue
      echo "----- last lines of $(basename "$log") -----" >&2
      tail -n 25 "$log" >&2
    done
  fi
  if [ -n "${SMOKE_KEEP:-}" ]; then
    say "SMOKE_KEEP is set: leaving $WORK (remove it with: buildah --root $WORK/root.$STORAGE_DRIVER --runroot $WORK/runroot.$STORAGE_DRIVER rm --all; umount what is mounted under it; rm -rf it)"
    return
  fi
  if [ -d "$WORK/root.$STORAGE_DRIVER" ]; then
    bah rm --all >/dev/null 2>&1
    bah rmi --all --force >/dev/null 2>&1
  fi
  # Unmount whatever is still mounted under the storage (overlay layers, the driver's own bind
  # mount), deepest first, before removing it.
  awk -v dir="$WORK" 'index($2, dir) == 1 { print $2 }' /proc/self/mounts | sort -r | while read -r mountpoint; do
    umount "$mountpoint" 2>/dev/null || umount -l "$mountpoint" 2>/dev/null
  done
  if awk -v dir="$WORK" 'index($2, dir) == 1 { found = 1 } END { exit !found }' /proc/self/mounts; then
    echo "smoke: could not unmount everything under $WORK; leaving it in place" >&2
  else
    rm -rf --one-file-system "$WORK"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'echo "smoke: interrupted" >&2; exit 130' INT
trap 'echo "smoke: terminated" >&2; exit 143' TERM

free_port() { "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
json_field() { # json_field FILE EXPR: evaluate a Python expression over the JSON document `d`
  "$PYTHON" -c 'import json, sys; d = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"
}

# A scratch container in our own storage proves buildah can run here (overlay, else vfs; each
# driver in a storage directory of its own).
probe_ok=
probe_error=
for driver in ${SMOKE_STORAGE_DRIVERS:-overlay vfs}; do
  STORAGE_DRIVER=$driver
  BASE_CTR=
  if BASE_CTR=$(bah from scratch 2>"$WORK/probe.log") && BASE_MNT=$(bah mount "$BASE_CTR" 2>>"$WORK/probe.log"); then
    probe_ok=1
    break
  fi
  probe_error=$(grep -v '^[[:space:]]*$' "$WORK/probe.log" | tail -n 1) || true
  [ -z "$BASE_CTR" ] || bah rm "$BASE_CTR" >/dev/null 2>&1 || true
done
rm -f "$WORK/probe.log"
[ -n "$probe_ok" ] || skip "buildah cannot create a container here: ${probe_error:-no error message}"
say "buildah $(buildah --version | awk '{print $3}'), storage driver $STORAGE_DRIVER, storage in $WORK"

# --- 1. The stand-in for python:3.11-slim ------------------------------------------------------
mirror=${SMOKE_MIRROR:-}
if [ -z "$mirror" ] && [ -f /etc/apt/sources.list.d/debian.sources ]; then
  mirror=$(awk '/^URIs:/ && $2 !~ /security/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources)
fi
if [ -z "$mirror" ] && [ -f /etc/apt/sources.list ]; then
  mirror=$(awk '$1 == "deb" && $3 !~ /security/ { print $2; exit }' /etc/apt/sources.list)
fi
mirror=${mirror:-http://deb.debian.org/debian}
say "making the stand-in base image: debootstrap $SUITE from $mirror ($(elapsed))"
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
  "$SUITE" "$BASE_MNT" "$mirror" >"$WORK/debootstrap.log" 2>&1 || fail "debootstrap failed (its log follows)"
# The official image keeps Python in /usr/local/bin and lets pip install into a venv or anywhere.
for name in python python3 pip pip3; do
  target=/usr/bin/$name
  [ "$name" = python ] && target=/usr/bin/python3
  [ "$name" = pip ] && target=/usr/bin/pip3
  ln -sf "$target" "$BASE_MNT/usr/local/bin/$name"
done
rm -f "$BASE_MNT"/usr/lib/python3*/EXTERNALLY-MANAGED
# The host's extra CA certificates (a TLS-inspecting egress proxy), or pip in the build cannot
# verify PyPI.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$BASE_MNT/usr/local/share/ca-certificates/"
  chroot "$BASE_MNT" update-ca-certificates >>"$WORK/debootstrap.log" 2>&1 || fail "update-ca-certificates in the stand-in failed"
fi
rm -rf "$BASE_MNT"/var/cache/apt/archives/*.deb "$BASE_MNT"/var/lib/apt/lists/*
bah unmount "$BASE_CTR" >/dev/null
bah config --env PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
  --cmd python3 "$BASE_CTR"
bah commit --quiet --rm --format docker "$BASE_CTR" "$BASE_IMAGE" >/dev/null
BASE_CTR=
say "stand-in base image committed as $BASE_IMAGE ($(elapsed))"

# --- 2. The image, from the Dockerfile as it is -----------------------------------------------
say "building the image from Dockerfile ($(elapsed))"
bah bud --isolation chroot --pull=never --format docker --layers=false -t "$IMAGE" -f Dockerfile . \
  >"$WORK/build.log" 2>&1 || fail "buildah bud failed (its log follows)"
bah inspect --type image "$IMAGE" >"$WORK/image.json"
bah inspect --type image "$BASE_IMAGE" >"$WORK/base.json"
# Sizes of the uncompressed layers (what `docker images` shows), in MB of 10^6 bytes.
layers_bytes() { json_field "$1" 'sum(layer["size"] for layer in json.loads(d["Manifest"])["layers"])'; }
image_bytes=$(layers_bytes "$WORK/image.json")
base_bytes=$(layers_bytes "$WORK/base.json")
mb() { "$PYTHON" -c 'import sys; print(f"{int(sys.argv[1]) / 1e6:.1f} MB")' "$1"; }
image_size=$(mb "$image_bytes")
say "image built ($(elapsed)): $IMAGE"
say "image size: $image_size = stand-in base $(mb "$base_bytes") + the Dockerfile's own layers $(mb $((image_bytes - base_bytes)))"

# What the Dockerfile promised: a non-root user, port 8000, a HEALTHCHECK, a command.
user=$(json_field "$WORK/image.json" 'd["Docker"]["config"].get("User") or ""')
exposed=$(json_field "$WORK/image.json" '" ".join(sorted((d["Docker"]["config"].get("ExposedPorts") or {})))')
health_json=$(json_field "$WORK/image.json" 'json.dumps((d["Docker"]["config"].get("Healthcheck") or {}).get("Test") or [])')
cmd_json=$(json_field "$WORK/image.json" 'json.dumps((d["Docker"]["config"].get("Entrypoint") or []) + (d["Docker"]["config"].get("Cmd") or []))')
say "image config: User=$user ExposedPorts=$exposed Cmd=$cmd_json"
say "image config: Healthcheck=$health_json"
case "${user%%:*}" in "" | 0 | root) fail "the image runs as root (User=${user:-unset})" ;; esac
[ "$exposed" = "8000/tcp" ] || fail "the image exposes '$exposed', not 8000/tcp"
[ "$health_json" != "[]" ] || fail "the image has no HEALTHCHECK (built without --format docker?)"
grep -q '/healthz' <<<"$health_json" || fail "the HEALTHCHECK does not check /healthz: $health_json"
[ "$cmd_json" != "[]" ] || fail "the image has no CMD"
mapfile -t IMAGE_CMD < <("$PYTHON" -c 'import json, sys; print("\n".join(json.loads(sys.argv[1])))' "$cmd_json")
mapfile -t HEALTH_TEST < <("$PYTHON" -c 'import json, sys; print("\n".join(json.loads(sys.argv[1])))' "$health_json")
case "${HEALTH_TEST[0]}" in
  CMD) HEALTH_CMD=("${HEALTH_TEST[@]:1}") ;;
  CMD-SHELL) HEALTH_CMD=(/bin/sh -c "${HEALTH_TEST[1]}") ;;
  *) fail "unexpected HEALTHCHECK form: $health_json" ;;
esac

# --- 3. The services on the host: a fake upstream, and a Redis with config/redis.conf ---------
UPSTREAM_PORT=$(free_port)
"$PYTHON" -m tests.fake_upstream --host 127.0.0.1 --port "$UPSTREAM_PORT" >"$WORK/upstream.log" 2>&1 &
UPSTREAM_PID=$!
UPSTREAM=http://127.0.0.1:$UPSTREAM_PORT
if command -v redis-server >/dev/null 2>&1; then
  REDIS_PORT=$(free_port)
  # The compose Redis's configuration file, on loopback only for the test.
  redis-server "$REPO/config/redis.conf" --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$WORK" \
    >"$WORK/redis.log" 2>&1 &
  REDIS_PID=$!
  REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0
  say "Redis with config/redis.conf on 127.0.0.1:$REDIS_PORT"
else
  REDIS_URL=memory://
  say "no redis-server on the host: the proxy uses the embedded store (REDIS_URL=memory://)"
fi
PROXY_PORT=$(free_port)
PROXY=http://127.0.0.1:$PROXY_PORT
for _ in $(seq 100); do curl -fsS -o /dev/null "$UPSTREAM/models" 2>/dev/null && break; sleep 0.1; done
curl -fsS -o /dev/null "$UPSTREAM/models" || fail "the fake upstream did not start"

# --- 4. The image's own command ---------------------------------------------------------------
CTR=$(bah from --pull=never --quiet "$IMAGE")
bah config \
  --env PROXY_PORT="$PROXY_PORT" \
  --env PROXY_DRAIN_DELAY=2 \
  --env PROXY_SHUTDOWN_GRACE=5 \
  --env REDIS_URL="$REDIS_URL" \
  --env OPENAI_BASE_URL="$UPSTREAM" \
  --env ARTWORK_API_URL="$UPSTREAM" \
  --env IMAGE_API_URL="$UPSTREAM" \
  "$CTR"
say "running the image's command: ${IMAGE_CMD[*]} (PROXY_PORT=$PROXY_PORT, REDIS_URL=$REDIS_URL) ($(elapsed))"
TMPDIR="$WORK/tmp" setsid buildah --root "$WORK/root.$STORAGE_DRIVER" --runroot "$WORK/runroot.$STORAGE_DRIVER" \
  --storage-driver "$STORAGE_DRIVER" run --isolation chroot --network host "$CTR" -- "${IMAGE_CMD[@]}" >"$WORK/proxy.log" 2>&1 &
PROXY_PID=$!
up=
for _ in $(seq 200); do
  kill -0 "$PROXY_PID" 2>/dev/null || fail "the proxy exited at start"
  if curl -fsS -o /dev/null "$PROXY/healthz" 2>/dev/null; then up=1 && break; fi
  sleep 0.1
done
[ -n "$up" ] || fail "the proxy did not answer /healthz within 20 s"
say "the proxy answers on $PROXY ($(elapsed))"

# --- 5. From the host, as a client and an orchestrator would ----------------------------------
check() { # check NAME STATUS URL [curl args...]: the body lands in $WORK/NAME.json, headers in .headers
  local name=$1 want=$2 url=$3
  shift 3
  local got
  got=$(curl -sS -o "$WORK/$name.json" -D "$WORK/$name.headers" -w '%{http_code}' "$@" "$url") || fail "$name: curl $url failed"
  [ "$got" = "$want" ] || fail "$name: $url answered $got, expected $want: $(head -c 300 "$WORK/$name.json")"
}
header() { awk -v name="$2" 'tolower($1) == tolower(name) ":" { sub(/\r$/, ""); print $2 }' "$WORK/$1.headers"; }

check healthz 200 "$PROXY/healthz"
[ "$(json_field "$WORK/healthz.json" 'd["status"]')" = alive ] || fail "/healthz body: $(cat "$WORK/healthz.json")"
say "GET /healthz: 200 $(cat "$WORK/healthz.json")"

check readyz 200 "$PROXY/readyz"
[ "$(json_field "$WORK/readyz.json" 'd["status"]')" = ready ] || fail "/readyz body: $(cat "$WORK/readyz.json")"
say "GET /readyz: 200 $(cat "$WORK/readyz.json")"

check redis_health 200 "$PROXY/redis/health"
[ "$(json_field "$WORK/redis_health.json" 'd["status"]')" = healthy ] || fail "/redis/health body: $(cat "$WORK/redis_health.json")"
say "GET /redis/health: 200 $(cat "$WORK/redis_health.json")"
if [ "$REDIS_URL" != memory:// ]; then
  policy=$(json_field "$WORK/redis_health.json" 'd.get("maxmemory_policy")')
  maxmemory=$(json_field "$WORK/redis_health.json" 'd.get("maxmemory")')
  [ "$policy" = allkeys-lfu ] || fail "Redis runs with maxmemory_policy=$policy, not config/redis.conf's allkeys-lfu"
  [ "$maxmemory" = $((256 * 1024 * 1024)) ] || fail "Redis runs with maxmemory=$maxmemory, not config/redis.conf's 256mb"
fi

check artwork_miss 200 "$PROXY/artworks/Mona%20Lisa"
check artwork_hit 200 "$PROXY/artworks/mona_lisa"
[ "$(header artwork_miss X-Cache)" = MISS ] || fail "first GET /artworks/Mona%20Lisa: X-Cache=$(header artwork_miss X-Cache), expected MISS"
[ "$(header artwork_hit X-Cache)" = HIT ] || fail "second GET /artworks/mona_lisa: X-Cache=$(header artwork_hit X-Cache), expected HIT"
cmp -s "$WORK/artwork_miss.json" "$WORK/artwork_hit.json" || fail "the HIT's body differs from the MISS's"
say "GET /artworks/Mona%20Lisa: X-Cache MISS; GET /artworks/mona_lisa: X-Cache HIT, same body"

chat='{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Tell me about the Mona Lisa"}]}'
check chat_miss 200 "$PROXY/v1/chat/completions" -H 'Content-Type: application/json' --data "$chat"
check chat_hit 200 "$PROXY/v1/chat/completions" -H 'Content-Type: application/json' --data "$chat"
[ "$(header chat_miss X-Cache)" = MISS ] || fail "first POST /v1/chat/completions: X-Cache=$(header chat_miss X-Cache), expected MISS"
[ "$(header chat_hit X-Cache)" = HIT ] || fail "second POST /v1/chat/completions: X-Cache=$(header chat_hit X-Cache), expected HIT"
cmp -s "$WORK/chat_miss.json" "$WORK/chat_hit.json" || fail "the chat HIT's body differs from the MISS's"
say "POST /v1/chat/completions twice: X-Cache MISS, then HIT with the same body"

# --- 6. Inside the image: the user, the HEALTHCHECK command ------------------------------------
uid=$(bah run --isolation chroot --network host "$CTR" -- python -c 'import os; print(os.getuid())' 2>>"$WORK/run.log")
[ "$uid" != 0 ] || fail "commands in the image run as root"
say "commands in the image run as uid $uid"
bah run --isolation chroot --network host "$CTR" -- "${HEALTH_CMD[@]}" >>"$WORK/run.log" 2>&1 \
  || fail "the image's HEALTHCHECK command failed while the proxy was up"
say "the image's HEALTHCHECK command passes while the proxy runs"

# --- 7. SIGTERM to the container's main process, as an engine stops it -----------------------
# buildah's processes (buildah, buildah-chroot-runtime, buildah-chroot-exec) share the process
# group; the proxy is the one whose command line is not buildah's. (Read from /proc: no ps needed.)
find_main_pid() {
  local dir stat argv0 pgrp _state _ppid
  for dir in /proc/[0-9]*; do
    read -r stat 2>/dev/null <"$dir/stat" || continue
    read -r _state _ppid pgrp _ <<<"${stat##*) }"
    [ "$pgrp" = "$PROXY_PID" ] || continue
    argv0=
    IFS= read -r -d '' argv0 2>/dev/null <"$dir/cmdline" || true
    case "$argv0" in "" | buildah* | */buildah*) continue ;; esac
    echo "${dir#/proc/}"
    return
  done
}
main_pid=$(find_main_pid)
[ -n "$main_pid" ] || fail "cannot find the proxy's process under buildah run (pid $PROXY_PID)"
say "the proxy's process: $(tr '\0' ' ' <"/proc/$main_pid/cmdline")"
say "sending SIGTERM to the proxy (pid $main_pid) ($(elapsed))"
term_started=$SECONDS
kill -TERM "$main_pid"
# README, "Shutdown": /readyz answers 503 for PROXY_DRAIN_DELAY while /healthz stays 200, then the
# listener closes, and the process exits 0.
ready_503=
live_during_drain=
for _ in $(seq 200); do
  kill -0 "$PROXY_PID" 2>/dev/null || break
  ready=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$PROXY/readyz" 2>/dev/null) || true
  live=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$PROXY/healthz" 2>/dev/null) || true
  if [ "$ready" = 503 ]; then
    ready_503=1
    [ "$live" = 200 ] && live_during_drain=1
  fi
  sleep 0.1
done
kill -0 "$PROXY_PID" 2>/dev/null && fail "the proxy was still running 20 s after SIGTERM (PROXY_DRAIN_DELAY=2, PROXY_SHUTDOWN_GRACE=5)"
proxy_status=0
wait "$PROXY_PID" || proxy_status=$?
PROXY_PID=
[ "$proxy_status" = 0 ] || fail "the proxy exited with status $proxy_status after SIGTERM, expected 0"
[ -n "$ready_503" ] || fail "after SIGTERM /readyz never answered 503: an orchestrator keeps routing to a stopping proxy"
[ -n "$live_during_drain" ] || fail "while draining, /healthz did not answer 200: liveness would fail during a drain"
say "after SIGTERM: /readyz 503 and /healthz 200 while draining, then exit 0 after $((SECONDS - term_started)) s"
if bah run --isolation chroot --network host "$CTR" -- "${HEALTH_CMD[@]}" >>"$WORK/run.log" 2>&1; then
  fail "the image's HEALTHCHECK command passes with the proxy stopped: it checks nothing"
fi
say "the image's HEALTHCHECK command fails once the proxy has stopped"

say "PASSED in $(elapsed): image size $image_size"
