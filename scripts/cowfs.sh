#!/usr/bin/env bash
# Mount real copy-on-write (and non-CoW) filesystems on loop images so the
# test suite can exercise every clone strategy on one machine.
#
#   eval "$(scripts/cowfs.sh up)"   # create + mount, print export lines
#   scripts/cowfs.sh env            # print export lines for what is mounted
#   scripts/cowfs.sh down           # unmount, detach loops, remove images
#
# Only `export` lines go to stdout; every diagnostic goes to stderr.
# State lives in ${COWFS_STATE:-/var/tmp/cowenv-fs}; needs root.
set -euo pipefail

STATE=${COWFS_STATE:-/var/tmp/cowenv-fs}
MNT=$STATE/mnt

# name  env-var                  fstype  size  mkfs command (image appended)
FILESYSTEMS=(
  "btrfs      COWENV_TEST_BTRFS        btrfs  2G    mkfs.btrfs -f -q"
  "xfs        COWENV_TEST_XFS          xfs    2G    mkfs.xfs -f -q -m reflink=1"
  "ext4       COWENV_TEST_EXT4         ext4   1G    mkfs.ext4 -F -q"
  "tmpfs      COWENV_TEST_TMPFS        tmpfs  512M  -"
  "small      COWENV_TEST_SMALL        ext4   160M  mkfs.ext4 -F -q -m 0"
  "smallbtrfs COWENV_TEST_SMALL_BTRFS  btrfs  300M  mkfs.btrfs -f -q --mixed"
)

log() { printf 'cowfs: %s\n' "$*" >&2; }

warn() {
  if [[ ${CI:-} == true ]]; then
    {
      printf '\n%s\n' '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!'
      printf 'WARNING: %s\n' "$@"
      printf 'WARNING: tests that need this filesystem will be SKIPPED.\n'
      printf '%s\n\n' '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!'
    } >&2
  else
    printf 'WARNING: %s\n' "$@" >&2
  fi
}

# True if $1 is a mount point carrying filesystem type $2.
mounted_as() {
  [[ $(findmnt -n -o FSTYPE --mountpoint "$1" 2>/dev/null || true) == "$2" ]]
}

print_env() {
  local name var fstype _
  for spec in "${FILESYSTEMS[@]}"; do
    read -r name var fstype _ <<<"$spec"
    if mounted_as "$MNT/$name" "$fstype"; then
      printf 'export %s=%q\n' "$var" "$MNT/$name"
    fi
  done
}

ensure_tools() {
  command -v mkfs.btrfs >/dev/null && command -v mkfs.xfs >/dev/null && return 0
  log "installing btrfs-progs and xfsprogs"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq btrfs-progs xfsprogs; } >&2 \
    || warn "could not install btrfs-progs/xfsprogs"
}

mount_one() {
  local name=$1 fstype=$2 size=$3; shift 3
  local mnt=$MNT/$name img=$STATE/$name.img opts=loop
  mkdir -p "$mnt"
  if mounted_as "$mnt" "$fstype"; then
    log "$name: already mounted at $mnt"
    return 0
  fi
  if [[ $fstype == tmpfs ]]; then
    mount -t tmpfs -o "size=$size" cowenv-tmpfs "$mnt"
  else
    [[ $fstype == btrfs ]] && opts+=,user_subvol_rm_allowed
    rm -f "$img"
    truncate -s "$size" "$img"
    local out # mkfs is chatty even with -q: show its output only on failure
    out=$("$@" "$img" 2>&1) || { printf '%s\n' "$out"; return 1; }
    mount -t "$fstype" -o "$opts" "$img" "$mnt"
  fi
  chmod 1777 "$mnt"
  log "$name: mounted $fstype ($size) at $mnt"
}

cmd_up() {
  ensure_tools
  mkdir -p "$MNT"
  local name var fstype size mkfs
  for spec in "${FILESYSTEMS[@]}"; do
    read -r name var fstype size mkfs <<<"$spec"
    # A failure must not abort the others. (errexit is ignored inside an
    # `if`, so run the subshell outside one and check the result instead.)
    set +e
    # shellcheck disable=SC2086  # mkfs is a word list on purpose
    (set -e; mount_one "$name" "$fstype" "$size" $mkfs)
    set -e
    mounted_as "$MNT/$name" "$fstype" \
      || warn "could not mount $fstype at $MNT/$name; $var will NOT be set."
  done
}

cmd_down() {
  local target name img dev
  if [[ -d $MNT ]]; then
    # Deepest first, in case anything got mounted inside our mounts.
    findmnt -rn -o TARGET | awk -v p="$MNT/" 'index($0, p) == 1' | sort -r |
      while read -r target; do
        target=$(printf '%b' "$target")  # findmnt escapes spaces as \x20
        if ! umount "$target" 2>/dev/null; then
          log "$target is busy: lazy unmount"
          umount -l "$target" || warn "could not unmount $target"
        fi
      done
  fi
  for spec in "${FILESYSTEMS[@]}"; do
    read -r name _ <<<"$spec"
    img=$STATE/$name.img
    if [[ -e $img ]]; then
      for dev in $(losetup -n -O NAME -j "$img" 2>/dev/null || true); do
        losetup -d "$dev" 2>/dev/null || true # if still busy: autoclears later
      done
      rm -f "$img"
    fi
    rmdir "$MNT/$name" 2>/dev/null || true
  done
  rmdir "$MNT" "$STATE" 2>/dev/null || true
  log "down: done"
}

case ${1:-} in
  up | down)
    if [[ $(id -u) -ne 0 ]]; then
      log "not root: cannot mount loop filesystems; no COWENV_TEST_* exported"
      log "(run as root, e.g. 'sudo $0 $1', to test the btrfs/xfs/ext4/tmpfs strategies)"
      exit 0
    fi
    exec 3>&1 1>&2 # nothing but export lines may reach the caller's stdout
    "cmd_$1"
    if [[ $1 == up ]]; then print_env >&3; fi
    ;;
  env) print_env ;;
  *)
    echo "usage: $0 up|down|env" >&2
    exit 2
    ;;
esac
exit 0
