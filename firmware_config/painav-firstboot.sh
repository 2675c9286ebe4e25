#!/bin/bash
# painav-firstboot.sh: turn a freshly imaged Raspberry Pi OS card into a painav unit.
#
# Run once, as root, by cloud-init at the first boot (firmware_config/user-data, runcmd), from
# the boot partition: /boot/firmware/painav/painav-firstboot.sh. It
#   0. makes sure the OS packages and the painav account exist (normally done by user-data);
#   1. checks the data partition (label PAINAV-DATA) exists and mounts it on /var/lib/painav;
#   2. unpacks the provisioning bundle /boot/firmware/painav-bundle.tar (the site folder's
#      devices/<id>.tar, copied under that name) into RAM, checks it
#      holds exactly the expected files, and shreds it from the boot partition;
#   3. installs the keys (0400, owned by painav) on the data partition and the configuration
#      and trust anchors (root-owned, read-only to painav) in /etc/painav;
#   4. installs the OS configuration from this folder (watchdog, journal, time sync, Wi-Fi,
#      ALSA, udev, fstab, the data partition's mount unit, config.txt) and painav itself into
#      /opt/painav/.venv;
#   5. enables painav-device.service, var-lib-painav.mount and systemd-time-wait-sync.service,
#      masks hciuart.service (Bluetooth is off), switches swap off and turns on the read-only
#      root (overlay) for the next boot;
#   6. leaves /var/lib/painav/.provisioned, which tells cloud-init to reboot (power_state).
#
# Why the bundle must not stay on the boot partition: it is FAT, has no permissions, and can be
# read by anyone who holds the SD card for a minute. Shredding overwrites the file in place;
# SD cards remap blocks internally, so copies may survive in flash: a card that held a bundle
# and is lost must have its unit revoked (`painav provision ... revoke`, see README.md).
#
# Bundle layout (from `painav provision`; mapping: keys/* -> /var/lib/painav/keys/, the rest
# -> /etc/painav/):
#   device.toml  recipients.txt  certs/tls.crt  certs/ca-chain.pem  certs/crl.pem
#   keys/signing.key  keys/tls.key
#
# `painav-firstboot.sh --check-bundle painav-bundle.tar` runs only the bundle checks, on IT's
# workstation, before the bundle goes onto a card.
#
# Any failure stops the script with one line saying what and where, and no reboot happens, so
# IT can read `journalctl -u cloud-final` (or /var/log/cloud-init-output.log) on the console.
set -euo pipefail
umask 077

BOOT=/boot/firmware
SRC=$BOOT/painav
BUNDLE=$BOOT/painav-bundle.tar
DATA=/var/lib/painav
DATA_LABEL=PAINAV-DATA
ETC=/etc/painav
VENV=/opt/painav/.venv
BUNDLE_FILES="certs/ca-chain.pem certs/crl.pem certs/tls.crt device.toml keys/signing.key keys/tls.key recipients.txt"

log() { echo "painav-firstboot: $*"; }
die() { echo "painav-firstboot: error: $*" >&2; exit 1; }

# read_only_root CMDLINE: turn on raspi-config's overlay file system for the next boot, then check
# that CMDLINE holds it in the one form raspi-config recognises to turn it off again: the token
# "overlayroot=tmpfs" followed by a space (its disable_overlayfs() removes "overlayroot=tmpfs ").
read_only_root() {
    local cmdline=$1
    raspi-config nonint do_overlayfs 0 || die "raspi-config could not enable the overlay file system"
    grep -q '\(^\| \)overlayroot=tmpfs ' "$cmdline" \
        || die "$cmdline: no 'overlayroot=tmpfs ' after raspi-config: $(cat "$cmdline")"
    if grep -q 'overlayroot=[^ ]*:' "$cmdline"; then
        die "$cmdline: overlayroot has options raspi-config cannot turn off: $(cat "$cmdline")"
    fi
}

# unpack_bundle TAR DIR: unpack TAR into the empty directory DIR and check it holds exactly the
# bundle's files, as regular files. GNU tar refuses members with "..", strips a leading "/",
# and --no-same-owner/--no-same-permissions make the archive's owners and modes irrelevant.
unpack_bundle() {
    local tarfile=$1 dir=$2 odd found
    tar -x --no-same-owner --no-same-permissions -f "$tarfile" -C "$dir" \
        || die "$tarfile: not a readable tar file"
    odd=$(find "$dir" -mindepth 1 ! -type f ! -type d -printf '%P\n')
    [ -z "$odd" ] || die "$tarfile: unexpected links or special files: $odd"
    found=$(cd "$dir" && find . -type f -printf '%P\n' | LC_ALL=C sort | tr '\n' ' ' | sed 's/ $//')
    [ "$found" = "$BUNDLE_FILES" ] || die "$tarfile: expected files [$BUNDLE_FILES], found [$found]"
    grep -q '^age1' "$dir/recipients.txt" || die "$tarfile: recipients.txt has no age1... recipient"
}

# `painav-firstboot.sh --check-bundle FILE` checks a bundle on IT's workstation before it goes
# onto a card (no root needed, nothing installed).
if [ "${1:-}" = "--check-bundle" ]; then
    [ $# -eq 2 ] || die "usage: $0 --check-bundle painav-bundle.tar"
    check_dir=$(mktemp -d)
    trap 'rm -rf "$check_dir"' EXIT
    unpack_bundle "$2" "$check_dir"
    log "$2: bundle layout OK"
    exit 0
fi

[ "$(id -u)" -eq 0 ] || die "must run as root"
[ -d "$SRC" ] || die "$SRC not found: copy firmware_config/ to the boot partition as painav/"

# --- 0. packages and the painav account ---------------------------------------------------------
# cloud-init's user-data normally did both already; repeated here (idempotently) so the script
# also works when run by hand on an OS image without cloud-init (README.md, "Bookworm images").
PACKAGES="python3-venv python3-picamera2 libportaudio2 python3-gpiozero python3-lgpio python3-systemd alsa-utils overlayroot"
missing=""
for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    log "installing:$missing"
    apt-get update -q || die "apt-get update failed: is the network up?"
    # shellcheck disable=SC2086  # word splitting of the package list is intended
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing \
        || die "installing$missing failed"
fi
PAINAV_GROUPS=video,audio,gpio
if ! getent passwd painav >/dev/null; then
    useradd --system --no-create-home --home-dir "$DATA" --shell /usr/sbin/nologin \
        --groups "$PAINAV_GROUPS" --comment "painav recorder" painav
fi
usermod --lock --append --groups "$PAINAV_GROUPS" painav

# --- 1. the data partition --------------------------------------------------------------------
# Checked before the bundle is touched: without the data partition the keys have no safe place,
# so the bundle stays where it is and nothing is half-installed.
data_dev=$(blkid -L "$DATA_LABEL" || true)
[ -n "$data_dev" ] || die "no partition labelled $DATA_LABEL: create it before the first boot (README.md, step 2)"
install -d -m 0700 -o root -g root "$DATA"
if ! mountpoint -q "$DATA"; then
    mount -t ext4 -o noatime,nodev,nosuid,noexec "$data_dev" "$DATA" || die "cannot mount $data_dev on $DATA"
fi

# --- 2. the bundle: into RAM, check, shred from the boot partition ----------------------------
if [ -f "$DATA/.provisioned" ] && [ ! -e "$BUNDLE" ]; then
    log "already provisioned ($(cat "$DATA/.provisioned")), nothing to do"
    exit 0
fi
[ -f "$BUNDLE" ] || die "$BUNDLE not found: copy the unit's bundle from \`painav provision\` to the boot partition"

stage=$(mktemp -d /run/painav-bundle.XXXXXX)   # /run is tmpfs: the keys never touch the card
trap 'rm -rf "$stage"' EXIT
unpack_bundle "$BUNDLE" "$stage"

shred --remove --zero "$BUNDLE" || die "could not shred $BUNDLE: remove it from the card by hand"
sync
log "bundle unpacked to RAM and shredded from the boot partition"

# --- 3. keys on the data partition, configuration in /etc/painav -----------------------------
chown painav:painav "$DATA"
chmod 0700 "$DATA"
install -d -m 0700 -o painav -g painav "$DATA/keys"
for f in signing.key tls.key; do
    install -m 0400 -o painav -g painav "$stage/keys/$f" "$DATA/keys/$f"
done
# Root-owned and read-only to the painav group: a compromised daemon cannot change whom it
# encrypts to or which CA it trusts (and so whose receipts and arm commands it accepts). The
# daemon keeps newer root CRLs it is sent in $DATA/crl.pem; this one is its floor.
install -d -m 0750 -o root -g painav "$ETC" "$ETC/certs"
install -m 0640 -o root -g painav "$stage/device.toml" "$ETC/device.toml"
install -m 0640 -o root -g painav "$stage/recipients.txt" "$ETC/recipients.txt"
install -m 0640 -o root -g painav "$stage/certs/tls.crt" "$ETC/certs/tls.crt"
install -m 0640 -o root -g painav "$stage/certs/ca-chain.pem" "$ETC/certs/ca-chain.pem"
install -m 0640 -o root -g painav "$stage/certs/crl.pem" "$ETC/certs/crl.pem"
rm -rf "$stage"
log "keys installed in $DATA/keys, configuration in $ETC"

# --- 4. OS configuration from this folder -----------------------------------------------------
# From here on, files are for everyone to read (configuration, the venv the painav user runs).
umask 022
install -D -m 0644 "$SRC/system.conf.d/painav-watchdog.conf" /etc/systemd/system.conf.d/painav-watchdog.conf
install -D -m 0644 "$SRC/journald.conf.d/painav.conf" /etc/systemd/journald.conf.d/painav.conf
install -D -m 0644 "$SRC/timesyncd.conf.d/painav.conf" /etc/systemd/timesyncd.conf.d/painav.conf
install -D -m 0644 "$SRC/systemd-time-wait-sync.service.d/painav-timeout.conf" \
    /etc/systemd/system/systemd-time-wait-sync.service.d/painav-timeout.conf
install -D -m 0644 "$SRC/NetworkManager/conf.d/painav-wifi-powersave.conf" \
    /etc/NetworkManager/conf.d/painav-wifi-powersave.conf
install -D -m 0644 "$SRC/udev/90-painav-mic.rules" /etc/udev/rules.d/90-painav-mic.rules
install -D -m 0644 "$SRC/asound.conf" /etc/asound.conf
install -D -m 0644 "$SRC/painav-device.service" /etc/systemd/system/painav-device.service
install -D -m 0644 "$SRC/var-lib-painav.mount" /etc/systemd/system/var-lib-painav.mount
if grep -q 'hospital\.example' /etc/systemd/timesyncd.conf.d/painav.conf; then
    log "WARNING: timesyncd.conf.d/painav.conf still names the placeholder NTP servers"
fi

# fstab: the image's own devices for / and /boot/firmware with painav's options (read-only);
# the data partition and the tmpfs lines added as they are.
awk -v snippet="$SRC/fstab" '
    BEGIN {
        while ((getline line < snippet) > 0) {
            if (line ~ /^[ \t]*(#|$)/) continue
            split(line, f, /[ \t]+/)
            if (f[2] == "/" || f[2] == "/boot/firmware") opts[f[2]] = f[4]
            else extra[++n] = line
            mounts[f[2]] = 1
        }
    }
    /^[ \t]*(#|$)/ { print; next }
    ($2 in opts) { $4 = opts[$2]; print; next }
    ($2 in mounts) { next }   # replaced by the snippet line below
    { print }
    END { for (i = 1; i <= n; i++) print extra[i] }
' /etc/fstab > /etc/fstab.painav
mv /etc/fstab.painav /etc/fstab
chmod 0644 /etc/fstab

# config.txt: include painav's settings after the stock ones.
install -m 0644 "$SRC/config.txt" "$BOOT/painav-config.txt"
grep -qx 'include painav-config.txt' "$BOOT/config.txt" || printf '\ninclude painav-config.txt\n' >> "$BOOT/config.txt"

# Kernel command line: the memory cgroup controller, which Raspberry Pi kernels leave off unless
# asked, so that MemoryMax= and MemorySwapMax= in painav-device.service take effect.
cmdline=$BOOT/cmdline.txt
for p in cgroup_enable=memory cgroup_memory=1; do
    grep -qw -- "$p" "$cmdline" || sed -i "1 s/\$/ $p/" "$cmdline"
done

# painav itself: a venv that sees the OS's picamera2/libcamera, gpiozero/lgpio and systemd
# bindings (--system-site-packages), with painav and the rest from the wheelhouse, PyAudio
# included: painav needs PyAudio 0.2.14, Bookworm has 0.2.13 (the wheel links the OS's
# libportaudio2).
if [ ! -x "$VENV/bin/painav" ]; then
    ls "$SRC"/wheels/painav-*.whl >/dev/null 2>&1 || die "$SRC/wheels has no painav wheel (README.md, step 3)"
    python3 -m venv --system-site-packages "$VENV"
    "$VENV/bin/pip" install --no-index --find-links "$SRC/wheels" 'painav[device]' \
        || die "installing painav from $SRC/wheels failed"
fi
log "painav installed: $("$VENV/bin/painav" --version 2>/dev/null || echo "$VENV")"

# --- 5. services, swap, read-only root --------------------------------------------------------
systemctl daemon-reload
# time-sync.target then means "clock synchronised" (bounded by the drop-in installed above).
systemctl enable systemd-time-wait-sync.service systemd-timesyncd.service
systemctl enable painav-device.service
# The data partition, mounted by a unit rather than fstab (var-lib-painav.mount says why).
systemctl enable var-lib-painav.mount
# SSH for IT (key only, see user-data); the unit has no keyboard or screen on the ward.
systemctl enable ssh.service
# Bluetooth is off in config.txt (dtoverlay=disable-bt); hciuart.service, which would attach the
# Bluetooth modem to the UART, then fails at every boot on a Pi 4. Raspberry Pi's documentation
# for disable-bt says to disable it; masked, so a package update cannot enable it again.
systemctl mask hciuart.service
# No swap file on the SD card: plaintext frames and audio could otherwise be paged out to it
# (painav-device.service also sets MemorySwapMax=0 for itself).
if command -v dphys-swapfile >/dev/null; then
    dphys-swapfile swapoff || true
    dphys-swapfile uninstall || true
    systemctl disable dphys-swapfile.service || true
fi

# Read-only root (see fstab): raspi-config's overlay option writes "overlayroot=tmpfs " at the
# start of the kernel command line, exactly what its own "off" looks for and removes (the README's
# update procedure). Left as raspi-config writes it: with any option added ("tmpfs:recurse=0")
# raspi-config no longer finds it, and the overlay can then only be turned off by hand.
read_only_root "$cmdline"

# --- 6. done ----------------------------------------------------------------------------------
date -u +%Y-%m-%dT%H:%M:%SZ > "$DATA/.provisioned"
chown painav:painav "$DATA/.provisioned"
sync
log "done; rebooting into the read-only system"
