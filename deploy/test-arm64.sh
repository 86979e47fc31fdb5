#!/usr/bin/env bash
# A real arm64 check without hardware: qemu-user-static + an arm64 Debian bookworm root (minbase).
#
#   sudo deploy/test-arm64.sh                 # whole check (first run ~10 min for the root, cached after)
#   sudo deploy/test-arm64.sh --prepare-only  # only build/cache the base root
#   sudo deploy/test-arm64.sh --keep          # keep the work root (unmounted) for inspection
#
# Steps: build (or reuse) a cached debootstrap root, copy it to a work root, copy this repository in, run
# deploy/install-agent.sh --no-start inside it (install from the repo as a path), run `edgebench bench` on a
# tiny ONNX and on tests/data/tiny_mlp.tflite, then run `edgebench agent run` inside the root against a
# mosquitto on the host's loopback (the root shares the host's network) and wait for one ResultRecord.
#
# Traps handled (measured): binfmt_misc may not be mounted; onnxruntime and LiteRT crash under qemu 7.2
# unless /proc/cpuinfo describes an ARM CPU (a fake one is bind-mounted over it); QEMU_CPU=cortex-a76 (the
# default `max` is ~500x slower); the host's CA bundle is copied in for pip; everything is unmounted before
# the work root is deleted. Timing under emulation is meaningless: this checks correctness only.
#
# Environment: EDGEBENCH_ARM64_CACHE (default /var/cache/edgebench-arm64), DEBIAN_MIRROR,
# EDGEBENCH_ARM64_SUITE (default bookworm), PYTHON (host python with edgebench + onnx installed, default python3).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${EDGEBENCH_ARM64_CACHE:-/var/cache/edgebench-arm64}
SUITE=${EDGEBENCH_ARM64_SUITE:-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PYTHON=${PYTHON:-python3}
BASE="$CACHE/base-$SUITE"
WORK="$CACHE/work"
KEEP=0
PREPARE_ONLY=0
REBUILD=0
DEVICE_ID=arm64-qemu
TIMEOUT_S=${EDGEBENCH_ARM64_TIMEOUT:-900}

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --keep) KEEP=1 ;;
    --prepare-only) PREPARE_ONLY=1 ;;
    --rebuild) REBUILD=1 ;;
    --cache) CACHE=$2; BASE="$CACHE/base-$SUITE"; WORK="$CACHE/work"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

say() { printf '== [%(%H:%M:%S)T] %s\n' -1 "$*"; }
die() { echo "test-arm64: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot, mount)"
for cmd in debootstrap chroot mount umount mountpoint; do
  command -v "$cmd" >/dev/null || die "missing '$cmd' (apt-get install debootstrap)"
done
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || die "missing mosquitto (apt-get install mosquitto)"
QEMU=$(command -v qemu-aarch64-static || true)
[ -n "$QEMU" ] || die "missing qemu-aarch64-static (apt-get install qemu-user-static binfmt-support)"

START_S=$(date +%s)
BROKER_PID=""

# Unmount everything below a directory, deepest first (never deletes anything itself).
unmount_under() {
  local dir
  dir=$(realpath -m "$1")
  local mounts
  mounts=$(awk -v d="$dir" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/self/mounts | sort -r)
  for m in $mounts; do
    umount "$m" 2>/dev/null || umount -l "$m" || true
  done
  if awk -v d="$dir" '$2 == d || index($2, d "/") == 1 { found = 1 } END { exit !found }' /proc/self/mounts; then
    die "could not unmount everything below $dir; not deleting it"
  fi
}

safe_rm_root() {
  [ -e "$1" ] || return 0
  unmount_under "$1"
  rm -rf --one-file-system "$1"
}

cleanup() {
  local rc=$?
  set +e
  if [ -n "$BROKER_PID" ] && kill -0 "$BROKER_PID" 2>/dev/null; then
    kill "$BROKER_PID"; wait "$BROKER_PID" 2>/dev/null
  fi
  if [ -n "${AGENT_PID:-}" ] && kill -0 "$AGENT_PID" 2>/dev/null; then
    kill "$AGENT_PID"; sleep 2; kill -9 "$AGENT_PID" 2>/dev/null; wait "$AGENT_PID" 2>/dev/null
  fi
  [ -d "$BASE.tmp" ] && unmount_under "$BASE.tmp"
  if [ -d "$WORK" ]; then
    unmount_under "$WORK"
    if [ "$KEEP" = 1 ] || [ $rc != 0 ]; then
      echo "work root kept (unmounted) at $WORK"
    else
      rm -rf --one-file-system "$WORK"
    fi
  fi
  echo "test-arm64: $([ $rc = 0 ] && echo PASSED || echo FAILED) in $(( $(date +%s) - START_S )) s"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- binfmt_misc: the kernel must hand aarch64 ELF files to qemu ------------------------------------------
ensure_binfmt() {
  if ! mountpoint -q /proc/sys/fs/binfmt_misc; then
    say "mounting binfmt_misc"
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  fi
  if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    if command -v update-binfmts >/dev/null; then
      update-binfmts --enable qemu-aarch64 || true
    fi
  fi
  if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    say "registering qemu-aarch64 by hand (F flag: interpreter opened now, works inside the chroot)"
    printf '%s' ':qemu-aarch64:M::\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:'"$QEMU"':F' \
      > /proc/sys/fs/binfmt_misc/register
  fi
  grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 || die "binfmt qemu-aarch64 is not enabled"
}

# --- the cached base root ---------------------------------------------------------------------------------
build_base() {
  if [ "$REBUILD" = 1 ]; then safe_rm_root "$BASE"; fi
  if [ -f "$BASE/.edgebench-base-complete" ]; then
    say "reusing cached base root $BASE"
    return
  fi
  safe_rm_root "$BASE.tmp"
  safe_rm_root "$BASE"
  mkdir -p "$CACHE"
  say "debootstrap arm64 $SUITE minbase into $BASE (minutes under qemu: 164 s on a 2-core VM)"
  local t0=$SECONDS
  debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$SUITE" "$BASE.tmp" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
    || { tail -30 "$CACHE/debootstrap.log" >&2; die "debootstrap failed (log: $CACHE/debootstrap.log)"; }
  unmount_under "$BASE.tmp"
  rm -rf "$BASE.tmp"/var/cache/apt/archives/*.deb
  touch "$BASE.tmp/.edgebench-base-complete"
  mv "$BASE.tmp" "$BASE"
  say "base root ready in $((SECONDS - t0)) s ($(du -sh "$BASE" | cut -f1))"
}

# A Raspberry Pi 5-like /proc/cpuinfo (Cortex-A76). onnxruntime (cpuinfo library) and LiteRT read it at
# import and crash on qemu's x86 view of the host CPU.
write_fake_cpuinfo() {
  local out=$1 i
  : >"$out"
  for i in 0 1 2 3; do
    cat >>"$out" <<CPU
processor	: $i
BogoMIPS	: 108.00
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x4
CPU part	: 0xd0b
CPU revision	: 1

CPU
  done
  cat >>"$out" <<'CPU'
Revision	: d04170
Serial		: 0000000000000000
Model		: Raspberry Pi 5 Model B Rev 1.0 (emulated by qemu-user)
CPU
}

mount_work() {
  mount -t proc proc "$WORK/proc"
  mount --bind "$CACHE/cpuinfo" "$WORK/proc/cpuinfo"
  mount --bind /sys "$WORK/sys"
  mount -o remount,bind,ro "$WORK/sys"
  mount --bind /dev "$WORK/dev"
  mkdir -p "$CACHE/pip-cache" "$WORK/root/.cache/pip"
  mount --bind "$CACHE/pip-cache" "$WORK/root/.cache/pip"
}

# Run a command inside the work root as an aarch64 process, with a clean environment.
in_root() {
  chroot "$WORK" /usr/bin/env -i \
    PATH=/opt/edgebench/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 QEMU_CPU=cortex-a76 \
    PIP_CERT=/etc/ssl/certs/edgebench-host-ca.pem SSL_CERT_FILE=/etc/ssl/certs/edgebench-host-ca.pem \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/edgebench-host-ca.pem PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_DEFAULT_TIMEOUT=180 "$@"
}

ensure_binfmt
build_base
[ "$PREPARE_ONLY" = 1 ] && { say "base root prepared"; exit 0; }

# --- the work root: a fresh copy of the base, this repository in /src ---------------------------------------
say "copying base root to $WORK"
safe_rm_root "$WORK"
cp -a "$BASE" "$WORK"
write_fake_cpuinfo "$CACHE/cpuinfo"
cp /etc/resolv.conf "$WORK/etc/resolv.conf"
HOST_CA=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
[ -f "$HOST_CA" ] || HOST_CA=/etc/ssl/certs/ca-certificates.crt
cp "$HOST_CA" "$WORK/etc/ssl/certs/edgebench-host-ca.pem"
mkdir -p "$WORK/src"
tar -C "$REPO" --exclude=.git --exclude='*.egg-info' --exclude=__pycache__ --exclude=.pytest_cache \
  --exclude=.ruff_cache --exclude=.hypothesis --exclude=.benchmarks --exclude=build --exclude=dist \
  --exclude=.venv -cf - . | tar -C "$WORK/src" -xf -
mount_work

[ "$(in_root uname -m)" = aarch64 ] || die "the work root does not run as aarch64"
say "inside the root: $(in_root uname -m), $(in_root python3 --version), $(in_root grep -m1 'CPU part' /proc/cpuinfo)"

# --- install the agent --------------------------------------------------------------------------------------
# The real path: enroll the device on the "broker host" (credentials in the broker's password file, a bundle
# with the CA, the collector's public key and the install script), then run the printed command on it.
FREE_PORT="import sys; sys.path.insert(0, '$REPO'); from edgebench.broker import free_port; print(free_port())"
TLS_PORT=$("$PYTHON" -c "$FREE_PORT")
PLAIN_PORT=$("$PYTHON" -c "$FREE_PORT")
BROKER_DIR="$CACHE/broker"
rm -rf "$CACHE/keys" "$BROKER_DIR"
mkdir -p "$BROKER_DIR"
"$PYTHON" -c "import sys; sys.path.insert(0, '$REPO'); from wire.signing import generate_keypair; generate_keypair('$CACHE/keys', 'collector')"
"$PYTHON" "$REPO/deploy/arm64_agent_check.py" prepare --workdir "$BROKER_DIR"
say "edgebench fleet enroll $DEVICE_ID (bundle in the root's /tmp/bundle)"
"$PYTHON" -m edgebench fleet enroll "$DEVICE_ID" --broker-host 127.0.0.1 --broker-port "$TLS_PORT" \
  --ca-file "$BROKER_DIR/tls/edgebench-test-ca.crt" --trusted-key "$CACHE/keys/collector.pub" \
  --tags qemu,arm64 --password-file "$BROKER_DIR/edgebench.passwd" --from /src --bundle "$WORK/tmp/bundle" \
  >"$CACHE/enroll.txt" || { cat "$CACHE/enroll.txt" >&2; die "fleet enroll failed"; }
INSTALL_CMD=$(grep '^  sudo ./install-agent.sh ' "$CACHE/enroll.txt" | sed 's/^  sudo //') \
  || die "fleet enroll printed no install command"
say "install inside the root: $(sed -E 's/--password [^ ]+/--password ***/' <<<"$INSTALL_CMD") --no-start"
t0=$SECONDS
in_root bash -c "cd /tmp/bundle && $INSTALL_CMD --no-start"
say "installed in $((SECONDS - t0)) s"
# Idempotent: a second run reuses the venv and writes the same config (no agent.toml.bak appears).
t0=$SECONDS
in_root bash -c "cd /tmp/bundle && $INSTALL_CMD --no-start" >/dev/null
in_root test ! -e /etc/edgebench/agent.toml.bak || die "a re-run with the same flags changed the config"
say "re-run (idempotent) in $((SECONDS - t0)) s"
in_root test -f /etc/systemd/system/edgebench-agent.service || die "systemd unit not installed"
in_root test -L /etc/systemd/system/multi-user.target.wants/edgebench-agent.service \
  || die "systemd unit not enabled"
in_root edgebench --version
in_root /opt/edgebench/venv/bin/python - <<'PY' || die "the agent venv has a forbidden or missing package"
import importlib.util, platform
assert platform.machine() == "aarch64", platform.machine()
for banned in ("onnx", "torch", "tensorflow", "sqlite_utils"):
    assert importlib.util.find_spec(banned) is None, f"{banned} must not be on a device"
import onnxruntime, ai_edge_litert, paho.mqtt, psutil, numpy, cryptography  # noqa: F401
print("aarch64 venv: onnxruntime", onnxruntime.__version__, "numpy", numpy.__version__)
PY

# --- bench a tiny ONNX and the committed tiny TFLite -------------------------------------------------------
mkdir -p "$WORK/tmp/models"
"$PYTHON" -c "
import sys; sys.path.insert(0, '$REPO')
from pathlib import Path
from testkit.models import make_mlp_onnx
make_mlp_onnx(Path('$WORK/tmp/models/tiny_mlp.onnx'))
"
cp "$REPO/tests/data/tiny_mlp.tflite" "$WORK/tmp/models/tiny_mlp.tflite"
for model in tiny_mlp.onnx tiny_mlp.tflite; do
  say "edgebench bench /tmp/models/$model (aarch64, emulated: timings meaningless)"
  in_root timeout "$TIMEOUT_S" edgebench bench "/tmp/models/$model" --quick --threads 1,2 --json \
    >"$WORK/tmp/bench-$model.json" 2>"$WORK/tmp/bench-$model.txt" \
    || { cat "$WORK/tmp/bench-$model.txt" >&2; die "edgebench bench $model failed"; }
  sed 's/^/    /' "$WORK/tmp/bench-$model.txt"
  "$PYTHON" - "$WORK/tmp/bench-$model.json" <<'PY' || die "bench output for $model is not a set of ok results"
import json, sys
text = open(sys.argv[1]).read()
data = json.loads(text)
records = data if isinstance(data, list) else data.get("results", [data])
assert records, "no records"
for r in records:
    assert r["status"] == "ok", r.get("error")
    assert r["device"]["arch"] in ("aarch64", "arm64"), r["device"]["arch"]
    print(f"  {r['artifact']['format']:7s} threads={r['config']['threads']} p50={r['latency']['p50_ms']:.3f} ms "
          f"(emulated) n={r['latency']['n']} arch={r['device']['arch']} runtime={r['config']['runtime']}")
PY
done

# --- the agent service against a mosquitto on the host's loopback ------------------------------------------
# The agent runs from the config install-agent.sh wrote (broker port and trusted key set at install time).
say "edgebench agent run inside the root -> production mosquitto (TLS :$TLS_PORT, password, ACL) on the host loopback"
"$PYTHON" "$REPO/deploy/arm64_agent_check.py" run --tls-port "$TLS_PORT" --plain-port "$PLAIN_PORT" --workdir "$BROKER_DIR" \
  --device-id "$DEVICE_ID" --model "$WORK/tmp/models/tiny_mlp.onnx" --signing-key "$CACHE/keys/collector.key" \
  --timeout "$TIMEOUT_S" -- chroot "$WORK" /usr/bin/env -i \
  PATH=/opt/edgebench/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  HOME=/root LANG=C.UTF-8 QEMU_CPU=cortex-a76 \
  /opt/edgebench/venv/bin/edgebench agent run --config /etc/edgebench/agent.toml \
  || die "the agent did not deliver a result"

say "arm64 check passed"
