#!/usr/bin/env bash
# Install (or update, or remove) the edgebench agent on a device: Raspberry Pi OS / Debian, aarch64 or x86_64.
#
#   sudo ./install-agent.sh --from edgebench-0.1.0-py3-none-any.whl --device-id pi-kitchen --tags pi4,lab \
#        --broker-host broker.example --broker-port 8883 --tls --ca-file ca.crt \
#        --username pi-kitchen --password 's3cret' --trusted-key collector.pub
#   sudo ./install-agent.sh --uninstall [--purge]
#
# Idempotent: running it again with the same flags gives the same result (the venv is reused, the config is
# rewritten, the unit is re-enabled; a changed config is backed up as agent.toml.bak first).
#
# What to install (default: `edgebench[agent]` from the package index):
#   --from SRC            a wheel file, a source directory (e.g. a git checkout) or a URL of a wheel
#   --version V           edgebench==V from the index      --index-url URL   pip index to use
#   --pip-arg ARG         extra pip argument (repeatable)  --system-site-packages  let the venv see system packages
# Where (defaults in brackets):
#   --prefix DIR [/opt/edgebench] (venv in DIR/venv)      --config-dir DIR [/etc/edgebench]
#   --data-dir DIR [/var/lib/edgebench]                   --systemd-dir DIR [/etc/systemd/system]
#   --bin-dir DIR [/usr/local/bin] ("" for no symlink)    --user NAME [edgebench] (system user, created if
#                                                          missing; "" = none, the service runs as root)
# Configuration written to CONFIG_DIR/agent.toml:
#   --device-id ID [hostname]  --tags a,b  --broker-host H [localhost]  --broker-port P [1883, 8883 with --tls]
#   --mqtt-version 5|3 [5]  --tls  --ca-file F  --cert-file F --key-file F (client certificate, optional)
#   --username U [device id when a password is given]  --password P | --password-file F  (stored in
#   CONFIG_DIR/broker.password, mode 0640)  --trusted-key F (repeatable; copied to CONFIG_DIR/keys/)
# Service:
#   --no-start            install and enable the unit, but do not start it (images, chroots, tests)
#   --no-enable           do not enable the unit either     --uninstall [--purge (config, data and user too)]
#   --keep-config         upgrade only: keep the existing agent.toml and secrets (config flags are ignored)
set -euo pipefail

PREFIX=/opt/edgebench
CONFIG_DIR=/etc/edgebench
DATA_DIR=/var/lib/edgebench
SYSTEMD_DIR=/etc/systemd/system
BIN_DIR=/usr/local/bin
SERVICE_USER=edgebench
FROM=""
VERSION=""
INDEX_URL=""
PIP_ARGS=()
SYSTEM_SITE=0
DEVICE_ID=""
TAGS=""
BROKER_HOST=localhost
BROKER_PORT=""
MQTT_VERSION=5
TLS=0
CA_FILE=""
CERT_FILE=""
KEY_FILE=""
USERNAME=""
PASSWORD=""
PASSWORD_FILE=""
TRUSTED_KEYS=()
NO_START=0
NO_ENABLE=0
KEEP_CONFIG=0
UNINSTALL=0
PURGE=0
UNIT=edgebench-agent.service
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

die() { echo "install-agent: $*" >&2; exit 1; }
say() { echo "install-agent: $*"; }
need_arg() { [ $# -ge 2 ] || die "$1 needs a value"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --from) need_arg "$@"; FROM=$2; shift ;;
    --version) need_arg "$@"; VERSION=$2; shift ;;
    --index-url) need_arg "$@"; INDEX_URL=$2; shift ;;
    --pip-arg) need_arg "$@"; PIP_ARGS+=("$2"); shift ;;
    --system-site-packages) SYSTEM_SITE=1 ;;
    --prefix) need_arg "$@"; PREFIX=$2; shift ;;
    --config-dir) need_arg "$@"; CONFIG_DIR=$2; shift ;;
    --data-dir) need_arg "$@"; DATA_DIR=$2; shift ;;
    --systemd-dir) need_arg "$@"; SYSTEMD_DIR=$2; shift ;;
    --bin-dir) need_arg "$@"; BIN_DIR=$2; shift ;;
    --user) need_arg "$@"; SERVICE_USER=$2; shift ;;
    --device-id) need_arg "$@"; DEVICE_ID=$2; shift ;;
    --tags) need_arg "$@"; TAGS=$2; shift ;;
    --broker-host) need_arg "$@"; BROKER_HOST=$2; shift ;;
    --broker-port) need_arg "$@"; BROKER_PORT=$2; shift ;;
    --mqtt-version) need_arg "$@"; MQTT_VERSION=$2; shift ;;
    --tls) TLS=1 ;;
    --ca-file) need_arg "$@"; CA_FILE=$2; TLS=1; shift ;;
    --cert-file) need_arg "$@"; CERT_FILE=$2; shift ;;
    --key-file) need_arg "$@"; KEY_FILE=$2; shift ;;
    --username) need_arg "$@"; USERNAME=$2; shift ;;
    --password) need_arg "$@"; PASSWORD=$2; shift ;;
    --password-file) need_arg "$@"; PASSWORD_FILE=$2; shift ;;
    --trusted-key) need_arg "$@"; TRUSTED_KEYS+=("$2"); shift ;;
    --no-start) NO_START=1 ;;
    --keep-config) KEEP_CONFIG=1 ;;
    --no-enable) NO_ENABLE=1; NO_START=1 ;;
    --uninstall) UNINSTALL=1 ;;
    --purge) PURGE=1 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
  shift
done

VENV="$PREFIX/venv"
CONFIG="$CONFIG_DIR/agent.toml"

# systemd is managed with systemctl only when it runs this machine and the unit goes to its own directory;
# otherwise (image, chroot, tests with --systemd-dir) the unit is enabled by writing the symlink itself.
systemd_live() {
  [ "$SYSTEMD_DIR" = /etc/systemd/system ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null
}

# --- uninstall ---------------------------------------------------------------------------------------------
if [ "$UNINSTALL" = 1 ]; then
  if systemd_live; then
    systemctl disable --now "$UNIT" 2>/dev/null || true
  fi
  rm -f "$SYSTEMD_DIR/multi-user.target.wants/$UNIT" "$SYSTEMD_DIR/$UNIT"
  if systemd_live; then systemctl daemon-reload; fi
  if [ -n "$BIN_DIR" ] && [ -L "$BIN_DIR/edgebench" ] \
     && [ "$(readlink "$BIN_DIR/edgebench")" = "$VENV/bin/edgebench" ]; then
    rm -f "$BIN_DIR/edgebench"
  fi
  rm -rf "$VENV"
  rmdir "$PREFIX" 2>/dev/null || true
  if [ "$PURGE" = 1 ]; then
    rm -rf "$CONFIG_DIR" "$DATA_DIR"
    if [ -n "$SERVICE_USER" ] && id -u "$SERVICE_USER" >/dev/null 2>&1 && command -v userdel >/dev/null; then
      userdel "$SERVICE_USER" 2>/dev/null || true
    fi
    say "removed the agent, its config ($CONFIG_DIR) and data ($DATA_DIR)"
  else
    say "removed the agent (kept $CONFIG_DIR and $DATA_DIR; --purge removes them)"
  fi
  exit 0
fi

# --- checks ------------------------------------------------------------------------------------------------
ARCH=$(uname -m)
case "$ARCH" in
  aarch64|arm64|x86_64|amd64) ;;
  armv7l|armv6l) die "32-bit ARM ($ARCH) has no onnxruntime/LiteRT wheels: install 64-bit Raspberry Pi OS" ;;
  *) say "warning: untested architecture $ARCH" ;;
esac
case "$MQTT_VERSION" in 5|3) ;; *) die "--mqtt-version must be 5 or 3" ;; esac
[ -n "$BROKER_PORT" ] || BROKER_PORT=$([ "$TLS" = 1 ] && echo 8883 || echo 1883)
case "$BROKER_PORT" in ''|*[!0-9]*) die "--broker-port must be a number" ;; esac
[ -z "$PASSWORD" ] || [ -z "$PASSWORD_FILE" ] || die "give --password or --password-file, not both"
[ -z "$PASSWORD_FILE" ] || [ -f "$PASSWORD_FILE" ] || die "no such password file: $PASSWORD_FILE"
[ -z "$CA_FILE" ] || [ -f "$CA_FILE" ] || die "no such CA file: $CA_FILE"
[ -z "$CERT_FILE" ] || [ -f "$CERT_FILE" ] || die "no such client certificate: $CERT_FILE"
[ -z "$KEY_FILE" ] || [ -f "$KEY_FILE" ] || die "no such client key: $KEY_FILE"
[ -z "$CERT_FILE$KEY_FILE" ] || { [ -n "$CERT_FILE" ] && [ -n "$KEY_FILE" ]; } \
  || die "a client certificate needs both --cert-file and --key-file"
for key in ${TRUSTED_KEYS[@]+"${TRUSTED_KEYS[@]}"}; do [ -f "$key" ] || die "no such trusted key: $key"; done
if [ -z "$DEVICE_ID" ]; then
  DEVICE_ID=$(hostname 2>/dev/null || cat /etc/hostname 2>/dev/null || echo edgebench-device)
  DEVICE_ID=${DEVICE_ID%%.*}
fi
[[ "$DEVICE_ID" =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$ ]] \
  || die "invalid device id '$DEVICE_ID': 1-64 letters, digits, '.', '_' or '-'"
TAG_LIST=()
IFS=',' read -r -a RAW_TAGS <<<"$TAGS"
for tag in ${RAW_TAGS[@]+"${RAW_TAGS[@]}"}; do
  tag=${tag#"${tag%%[![:space:]]*}"}  # trim leading and trailing blanks
  tag=${tag%"${tag##*[![:space:]]}"}
  [ -n "$tag" ] || continue
  [[ "$tag" =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$ ]] || die "invalid tag '$tag'"
  TAG_LIST+=("$tag")
done
if [ -n "$PASSWORD$PASSWORD_FILE" ] && [ -z "$USERNAME" ]; then USERNAME=$DEVICE_ID; fi

# --- python and the venv -----------------------------------------------------------------------------------
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    say "installing python3 and python3-venv with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null 2>&1 \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null; }
  fi
  "$PY" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 10))' 2>/dev/null \
    || die "need Python >= 3.10 with venv (Debian: apt-get install python3-venv)"
fi

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
  say "reusing venv $VENV"
else
  say "creating venv $VENV"
  rm -rf "$VENV"
  mkdir -p "$PREFIX"
  venv_args=()
  [ "$SYSTEM_SITE" = 1 ] && venv_args+=(--system-site-packages)
  "$PY" -m venv ${venv_args[@]+"${venv_args[@]}"} "$VENV"
fi

if [ -z "$FROM" ]; then
  REQ="edgebench[agent]${VERSION:+==$VERSION}"
elif [[ "$FROM" =~ ^https?:// ]]; then
  REQ="edgebench[agent] @ $FROM"
elif [ -e "$FROM" ]; then
  REQ="edgebench[agent] @ file://$(cd "$(dirname "$FROM")" && pwd)/$(basename "$FROM")"
  [ -d "$FROM" ] && REQ="edgebench[agent] @ file://$(cd "$FROM" && pwd)"
else
  die "--from $FROM: no such file or directory"
fi
pip_cmd=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
[ -n "$INDEX_URL" ] && pip_cmd+=(--index-url "$INDEX_URL")
say "pip install '$REQ' ($ARCH)"
"${pip_cmd[@]}" ${PIP_ARGS[@]+"${PIP_ARGS[@]}"} "$REQ" \
  || die "pip install failed (network? an index with $ARCH wheels for onnxruntime/ai-edge-litert?)"
"$VENV/bin/edgebench" --version >/dev/null || die "the installed edgebench does not run"
if [ -n "$BIN_DIR" ]; then
  mkdir -p "$BIN_DIR"
  ln -sfn "$VENV/bin/edgebench" "$BIN_DIR/edgebench"
fi

# --- service user, directories ------------------------------------------------------------------------------
GROUP=root
if [ -n "$SERVICE_USER" ]; then
  if ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
    if command -v useradd >/dev/null; then
      useradd --system --home-dir "$DATA_DIR" --no-create-home --shell /usr/sbin/nologin "$SERVICE_USER"
      say "created system user $SERVICE_USER"
    else
      die "no user '$SERVICE_USER' and no useradd: create it or pass --user ''"
    fi
  fi
  # video: vcgencmd (/dev/vchiq) on Raspberry Pi OS.
  if getent group video >/dev/null 2>&1; then usermod -a -G video "$SERVICE_USER" 2>/dev/null || true; fi
  GROUP=$(id -gn "$SERVICE_USER")
fi
install -d -m 0755 "$CONFIG_DIR"
install -d -m 0750 -o "${SERVICE_USER:-root}" -g "$GROUP" "$DATA_DIR"

if [ "$KEEP_CONFIG" = 1 ]; then
  [ -f "$CONFIG" ] || die "--keep-config: there is no $CONFIG yet"
  say "keeping $CONFIG (--keep-config)"
else
# --- credentials and keys ----------------------------------------------------------------------------------
copy_secret() {  # src dest mode
  local tmp
  tmp=$(mktemp "$2.XXXXXX")
  cat "$1" >"$tmp"
  chmod "$3" "$tmp"
  chgrp "$GROUP" "$tmp"
  mv -f "$tmp" "$2"
}
BROKER_PASSWORD_FILE=""
if [ -n "$PASSWORD" ]; then
  BROKER_PASSWORD_FILE="$CONFIG_DIR/broker.password"
  copy_secret <(printf '%s\n' "$PASSWORD") "$BROKER_PASSWORD_FILE" 0640
elif [ -n "$PASSWORD_FILE" ]; then
  BROKER_PASSWORD_FILE="$CONFIG_DIR/broker.password"
  [ "$(realpath "$PASSWORD_FILE")" = "$(realpath -m "$BROKER_PASSWORD_FILE")" ] \
    || copy_secret "$PASSWORD_FILE" "$BROKER_PASSWORD_FILE" 0640
fi
CA_DEST=""
if [ -n "$CA_FILE" ]; then
  CA_DEST="$CONFIG_DIR/ca.crt"
  [ "$(realpath "$CA_FILE")" = "$(realpath -m "$CA_DEST")" ] || install -m 0644 "$CA_FILE" "$CA_DEST"
fi
CERT_DEST=""
KEY_DEST=""
if [ -n "$CERT_FILE" ]; then
  CERT_DEST="$CONFIG_DIR/client.crt"
  KEY_DEST="$CONFIG_DIR/client.key"
  [ "$(realpath "$CERT_FILE")" = "$(realpath -m "$CERT_DEST")" ] || install -m 0644 "$CERT_FILE" "$CERT_DEST"
  [ "$(realpath "$KEY_FILE")" = "$(realpath -m "$KEY_DEST")" ] || copy_secret "$KEY_FILE" "$KEY_DEST" 0640
fi
KEY_DESTS=()
if [ ${#TRUSTED_KEYS[@]} -gt 0 ]; then
  install -d -m 0755 "$CONFIG_DIR/keys"
  for key in "${TRUSTED_KEYS[@]}"; do
    dest="$CONFIG_DIR/keys/$(basename "$key")"
    [ "$(realpath "$key")" = "$(realpath -m "$dest")" ] || install -m 0644 "$key" "$dest"
    KEY_DESTS+=("$dest")
  done
fi

# --- agent.toml --------------------------------------------------------------------------------------------
toml_str() {  # a TOML basic string
  local s=${1//\\/\\\\}
  s=${s//\"/\\\"}
  printf '"%s"' "$s"
}
toml_list() {
  local out="" item
  for item in "$@"; do out+="${out:+, }$(toml_str "$item")"; done
  printf '[%s]' "$out"
}
NEW_CONFIG=$(mktemp "$CONFIG_DIR/.agent.toml.XXXXXX")
trap 'rm -f "$NEW_CONFIG"' EXIT
{
  echo "# Written by deploy/install-agent.sh; re-run it to change (the previous file is kept as agent.toml.bak)."
  echo "device_id = $(toml_str "$DEVICE_ID")"
  echo "tags = $(toml_list ${TAG_LIST[@]+"${TAG_LIST[@]}"})"
  echo "data_dir = $(toml_str "$DATA_DIR")"
  echo
  echo "[broker]"
  echo "host = $(toml_str "$BROKER_HOST")"
  echo "port = $BROKER_PORT"
  echo "mqtt_version = $MQTT_VERSION"
  echo "keepalive = 30"
  echo "tls = $([ "$TLS" = 1 ] && echo true || echo false)"
  echo "ca_file = $(toml_str "$CA_DEST")"
  echo "cert_file = $(toml_str "$CERT_DEST")"
  echo "key_file = $(toml_str "$KEY_DEST")"
  echo "username = $(toml_str "$USERNAME")"
  echo "password_file = $(toml_str "$BROKER_PASSWORD_FILE")"
  echo
  echo "[outbox]"
  echo "max_rows = 100000"
  echo
  echo "[jobs]"
  echo "trusted_keys = $(toml_list ${KEY_DESTS[@]+"${KEY_DESTS[@]}"})"
  echo "cache_mb = 2048"
  echo "max_artifact_mb = 512"
  echo "max_job_s = 3600"
  echo
  echo "[heartbeat]"
  echo "interval_s = 30"
} >"$NEW_CONFIG"
chmod 0640 "$NEW_CONFIG"
chgrp "$GROUP" "$NEW_CONFIG"
if [ -f "$CONFIG" ] && ! cmp -s "$CONFIG" "$NEW_CONFIG"; then
  cp -p "$CONFIG" "$CONFIG.bak"
  say "config changed; previous one kept as $CONFIG.bak"
fi
mv -f "$NEW_CONFIG" "$CONFIG"
trap - EXIT
say "wrote $CONFIG (device $DEVICE_ID, broker $BROKER_HOST:$BROKER_PORT, tls $([ "$TLS" = 1 ] && echo on || echo off))"
fi

# The agent validates its own config (files exist, ids valid, ports in range) before anything is enabled.
"$VENV/bin/python" -c 'import sys; from agent.service.config import load_config; load_config(sys.argv[1], env={})' \
  "$CONFIG" || die "the config does not load: $CONFIG"

# --- systemd unit ------------------------------------------------------------------------------------------
UNIT_SRC="$HERE/systemd/$UNIT"
[ -f "$UNIT_SRC" ] || die "missing $UNIT_SRC (run this script from a checkout or a copy of the whole deploy/ folder)"
install -d -m 0755 "$SYSTEMD_DIR"
UNIT_TMP=$(mktemp)
cp "$UNIT_SRC" "$UNIT_TMP"
sed -i \
  -e "s#/opt/edgebench/venv#$VENV#g" \
  -e "s#/etc/edgebench/agent.toml#$CONFIG#g" \
  "$UNIT_TMP"
if [ -n "$SERVICE_USER" ]; then
  sed -i -e "s#^User=.*#User=$SERVICE_USER#" -e "s#^Group=.*#Group=$GROUP#" "$UNIT_TMP"
else  # --user '': the service runs as root (still sandboxed by the unit's other settings)
  sed -i -e "/^User=/d" -e "/^Group=/d" "$UNIT_TMP"
fi
if [ "$DATA_DIR" != /var/lib/edgebench ]; then
  # StateDirectory= only knows /var/lib/<name>; a custom data dir is made writable explicitly.
  sed -i -e "s#^StateDirectory=.*#ReadWritePaths=$DATA_DIR#" -e "/^StateDirectoryMode=/d" "$UNIT_TMP"
fi
install -m 0644 "$UNIT_TMP" "$SYSTEMD_DIR/$UNIT"
rm -f "$UNIT_TMP"
if [ "$NO_ENABLE" = 1 ]; then
  say "installed $SYSTEMD_DIR/$UNIT (not enabled)"
elif systemd_live; then
  systemctl daemon-reload
  systemctl enable "$UNIT" >/dev/null
  if [ "$NO_START" = 1 ]; then
    say "enabled $UNIT (not started: --no-start)"
  else
    systemctl restart "$UNIT"
    say "started $UNIT: journalctl -u $UNIT -f"
  fi
else
  install -d -m 0755 "$SYSTEMD_DIR/multi-user.target.wants"
  ln -sfn "$SYSTEMD_DIR/$UNIT" "$SYSTEMD_DIR/multi-user.target.wants/$UNIT"
  say "enabled $UNIT for the next boot (systemd is not running here)"
fi
say "done: $("$VENV/bin/edgebench" --version)"
