#!/usr/bin/env bash
# Install the Edge WSI appliance layer: the service user, the Python venv in /opt/edge, the
# systemd units and the rootfs overlay (config default, tmpfiles.d, sysctl.d, udev rules).
# Idempotent: a second run changes nothing (files are rewritten only when their content or
# mode differs; /etc/edge/edge.toml is installed only when absent, never overwritten).
#
#   firmware/install.sh [--destdir DIR] [--watch DIR]... [--no-user] [--no-venv]
#                       [--source PATH] [--python PYTHON] [--no-enable]
#
#   --destdir DIR  install into DIR instead of / (an image root). systemctl, udevadm and
#                  sysctl run only when DIR is / and systemd is running.
#   --watch DIR    a scanner drop folder the service may write (default /srv/scanner);
#                  written to /etc/systemd/system/edge.service.d/paths.conf.
#   --no-user      do not create the edge user/group (tests; images that ship their own).
#   --no-venv      do not create /opt/edge/venv or pip-install the package.
#   --source PATH  what pip installs into the venv (default: this checkout).
#   --no-enable    do not enable edge.service and edge-housekeeping.timer.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
destdir="${DESTDIR:-/}"
make_user=1 make_venv=1 enable=1
source_pkg="$repo"
python="${PYTHON:-python3}"
watch=()

usage() { sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --destdir) destdir="$2"; shift 2 ;;
    --watch) watch+=("$2"); shift 2 ;;
    --no-user) make_user=0; shift ;;
    --no-venv) make_venv=0; shift ;;
    --source) source_pkg="$2"; shift 2 ;;
    --python) python="$2"; shift 2 ;;
    --no-enable) enable=0; shift ;;
    -h|--help) usage 0 ;;
    *) echo "install.sh: unknown option $1" >&2; usage 2 ;;
  esac
done
[ ${#watch[@]} -gt 0 ] || watch=(/srv/scanner)
for w in "${watch[@]}"; do
  case "$w" in
    *[[:space:]]*) echo "install.sh: --watch '$w': whitespace in a path is not supported" >&2; exit 2 ;;
    /home/*|/root/*|/run/user/*) echo "install.sh: --watch $w: hidden from the service by ProtectHome=" >&2; exit 2 ;;
    /*) ;;
    *) echo "install.sh: --watch $w: expected an absolute path" >&2; exit 2 ;;
  esac
done
destdir="${destdir%/}"
live=0
[ -z "$destdir" ] && live=1
root="${destdir:-}"   # prefix for every installed path ("" when installing into /)
changed=0 unchanged=0

note() { echo "install.sh: $*" >&2; }

# put SRC DEST MODE: install SRC as DEST (below the root) when content or mode differ.
put() {
  local src="$1" dest="$root$2" mode="$3"
  if [ -f "$dest" ] && cmp -s "$src" "$dest" && [ "$(stat -c %a "$dest")" = "${mode#0}" ]; then
    unchanged=$((unchanged + 1)); return
  fi
  install -D -m "$mode" "$src" "$dest"
  changed=$((changed + 1)); note "installed $2"
}

# put_text DEST MODE TEXT: like put, for generated content (not in a pipeline: a subshell
# would lose the counters).
put_text() {
  local tmp; tmp="$(mktemp)"
  printf '%s\n' "$3" > "$tmp"
  put "$tmp" "$1" "$2"
  rm -f "$tmp"
}

# conffile SRC DEST MODE: install only when absent; the site's edits are kept.
conffile() {
  if [ -e "$root$2" ]; then unchanged=$((unchanged + 1)); return; fi
  put "$1" "$2" "$3"
}

# dir DEST MODE: create (or fix the mode of) a directory.
dir() {
  local d="$root$1"
  if [ -d "$d" ] && [ "$(stat -c %a "$d")" = "${2#0}" ]; then unchanged=$((unchanged + 1)); return; fi
  install -d -m "$2" "$d"
  changed=$((changed + 1)); note "directory $1"
}

# 1. The service user: a system account without a login shell or home of its own.
if [ "$make_user" = 1 ]; then
  if [ "$live" = 1 ]; then
    if ! getent passwd edge >/dev/null; then
      useradd --system --user-group --home-dir /var/lib/edge --no-create-home \
        --shell /usr/sbin/nologin --comment "Edge WSI appliance" edge
      changed=$((changed + 1)); note "created user edge"
    fi
  elif ! grep -q '^edge:' "$root/etc/passwd" 2>/dev/null; then
    useradd --root "$root" --system --user-group --home-dir /var/lib/edge --no-create-home \
      --shell /usr/sbin/nologin --comment "Edge WSI appliance" edge
    changed=$((changed + 1)); note "created user edge in $root"
  fi
fi

# 2. The overlay: vendor files (always current) and the config default (kept once edited).
while IFS= read -r -d '' f; do
  rel="${f#"$here/rootfs"}"
  if [ "$rel" = /etc/edge/edge.toml ]; then
    conffile "$f" "$rel" 0644
  else
    put "$f" "$rel" 0644
  fi
done < <(find "$here/rootfs" -type f -print0 | sort -z)
dir /etc/edge/credentials 0700

# 3. The units, the site's writable paths as a drop-in, and the documentation they cite.
for u in edge.service edge-housekeeping.service edge-housekeeping.timer; do
  put "$repo/systemd/$u" "/etc/systemd/system/$u" 0644
done
# "-" before a path: a missing folder does not stop the service; the daemon reports it.
rw="$(printf -- '-%s ' "${watch[@]}")"
put_text /etc/systemd/system/edge.service.d/paths.conf 0644 "\
# Written by firmware/install.sh: the scanner drop folders edge may write.
# Rerun the installer with --watch DIR (or edit here and systemctl daemon-reload).
[Unit]
RequiresMountsFor=${watch[*]}
[Service]
ReadWritePaths=${rw% }"
for doc in "$repo"/docs/*.md; do
  put "$doc" "/opt/edge/docs/$(basename "$doc")" 0644
done

# 4. The venv, only on the live system: a venv hard-codes its own path, so for an image
# build run this installer inside the image's chroot instead.
if [ "$make_venv" = 1 ]; then
  if [ "$live" = 1 ]; then
    if [ ! -x /opt/edge/venv/bin/python ]; then
      "$python" -m venv /opt/edge/venv
      changed=$((changed + 1)); note "created /opt/edge/venv"
    fi
    /opt/edge/venv/bin/pip install --quiet --upgrade "$source_pkg"
    note "pip installed $source_pkg into /opt/edge/venv"
  else
    note "skipping the venv: run this installer inside the image chroot to build it"
  fi
fi

# 5. Activate, only on a running systemd host.
if [ "$live" = 1 ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemd-tmpfiles --create /usr/lib/tmpfiles.d/edge.conf
  /usr/lib/systemd/systemd-sysctl /usr/lib/sysctl.d/60-edge.conf || note "sysctl settings not applied"
  udevadm control --reload && udevadm trigger --action=change --sysname-match='nv*' || true
  command -v setfacl >/dev/null || note "warning: setfacl missing (apt install acl): the GPU ACL rule cannot run"
  [ "$enable" = 1 ] && systemctl enable edge.service edge-housekeeping.timer
  if [ -x /opt/edge/venv/bin/python ]; then
    /opt/edge/venv/bin/python -m edge.system.encryption /var/lib/edge \
      || note "warning: /var/lib/edge is not on an encrypted volume (docs/system.md, 'Encryption at rest')"
  fi
fi

note "done: $changed changed, $unchanged unchanged (root ${destdir:-/})"
