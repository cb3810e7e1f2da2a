#!/usr/bin/env bash
# Runs the test command on a cgroup v2 host: a Debian 13 (trixie) virtual machine — kernel
# 6.12, systemd's default unified cgroup hierarchy (cgroup v2 only), Docker from Debian's
# docker.io — that is, the machine a developer has today, started here under KVM with qemu.
#
# The VM mounts this checkout, the cargo target directory, /root (rustup's toolchains,
# cargo's registry cache) and /usr/local (cargo-nextest) from this machine over 9p at the
# same paths, so it reuses what was built here; its own disk (ext4) holds the system, Docker's
# state and the privileged tests' swapfile. Inside, tests/cgroup-v2/in-vm.sh checks that the
# VM really is cgroup v2 only, then runs `tests/run.sh` with the arguments given here.
#
# Usage (root, /dev/kvm): tests/cgroup-v2/vm.sh [--privileged-tests]
#                         tests/cgroup-v2/vm.sh --prepare   # only build the VM's image
#   WISP_VM_DIR       where the image is built and kept (default /var/tmp/wisp-cgroup-v2-vm)
#   WISP_VM_MEMORY    the VM's memory (default 12G); WISP_VM_CPUS (default: this machine's)
#   WISP_VM_TIMEOUT   seconds before the VM is stopped (default 5400)
# Output: the run's log in <target dir>/cgroup-v2-vm/run.log, the console in $WISP_VM_DIR;
# exits with the test command's status.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo="$(pwd -P)"
target="${CARGO_TARGET_DIR:-$repo/target}"
mkdir -p "$target"
target="$(cd "$target" && pwd -P)"
vm="${WISP_VM_DIR:-/var/tmp/wisp-cgroup-v2-vm}"
mem="${WISP_VM_MEMORY:-12G}"
cpus="${WISP_VM_CPUS:-$(nproc)}"
timeout_s="${WISP_VM_TIMEOUT:-5400}"
prepare=false
[ "${1:-}" = --prepare ] && { prepare=true; shift; }
args="$*"

[ "$(id -u)" -eq 0 ] || { echo "tests/cgroup-v2/vm.sh needs root (debootstrap, 9p passthrough)" >&2; exit 2; }
[ -w /dev/kvm ] || { echo "tests/cgroup-v2/vm.sh needs /dev/kvm" >&2; exit 2; }
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
if ((${#need[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

root="$vm/root"
image="$vm/disk.img"
mkdir -p "$vm"
if [ ! -f "$vm/root.done" ]; then
  echo "== building a Debian 13 root file system in $root (debootstrap, a few minutes)"
  rm -rf "$root"
  # What tests/run.sh would install on a fresh machine is installed here up front: the VM
  # has user-mode networking, but the run should not depend on it.
  debootstrap --variant=minbase \
    --include=systemd,systemd-sysv,udev,kmod,dbus,linux-image-amd64,initramfs-tools,e2fsprogs,util-linux,procps,iproute2,ca-certificates,docker.io,etcd-server,docker-registry,protobuf-compiler,libprotobuf-dev,python3,python3-venv,gcc,g++,libc6-dev,make,pkg-config,git \
    trixie "$root" http://deb.debian.org/debian
  cat > "$root/etc/fstab" <<'FSTAB'
/dev/vda / ext4 rw,errors=remount-ro 0 1
FSTAB
  echo wisp-cgroup-v2 > "$root/etc/hostname"
  echo "127.0.1.1 wisp-cgroup-v2" >> "$root/etc/hosts"
  mkdir -p "$root/etc/systemd/network"
  printf '[Match]\nName=en*\n\n[Network]\nDHCP=yes\n' > "$root/etc/systemd/network/10-wired.network"
  rm -f "$root/etc/resolv.conf"
  echo "nameserver 10.0.2.3" > "$root/etc/resolv.conf" # qemu user networking's resolver
  cat > "$root/etc/systemd/system/wisp-tests.service" <<'UNIT'
[Unit]
Description=Wisp's test command on this cgroup v2 machine (tests/cgroup-v2/in-vm.sh)
Wants=docker.service network-online.target
After=docker.service network-online.target local-fs.target

[Service]
Type=oneshot
Environment=HOME=/root
Environment=PATH=/root/.cargo/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin
ExecStart=/bin/sh -c 'mkdir -p /mnt/repo && mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 repo /mnt/repo && exec /bin/bash /mnt/repo/tests/cgroup-v2/in-vm.sh'
ExecStopPost=/bin/systemctl --no-block poweroff
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
UNIT
  chroot "$root" systemctl enable wisp-tests.service systemd-networkd.service >/dev/null
  # The tests start their own etcd and registry on free ports.
  chroot "$root" systemctl disable etcd.service docker-registry.service >/dev/null 2>&1 || true
  chroot "$root" passwd -d root >/dev/null
  touch "$vm/root.done"
  rm -f "$image"
fi
if [ ! -f "$image" ]; then
  echo "== making the VM's disk ($image)"
  truncate -s 40G "$image"
  mkfs.ext4 -q -F -d "$root" "$image"
fi
$prepare && { echo "the VM's image is ready in $vm"; exit 0; }
kernel="$(ls "$root"/boot/vmlinuz-* | sort -V | tail -1)"
initrd="$(ls "$root"/boot/initrd.img-* | sort -V | tail -1)"

out="$target/cgroup-v2-vm"
rm -rf "$out"
mkdir -p "$out"
echo "== booting the VM ($cpus CPUs, $mem; console in $vm/console.log; log in $out/run.log)"
share() { echo "-virtfs local,path=$1,mount_tag=$2,security_model=passthrough,id=$2"; }
# shellcheck disable=SC2046
timeout --foreground "$timeout_s" qemu-system-x86_64 -enable-kvm -cpu "${WISP_VM_CPU_MODEL:-host,-arch-capabilities}" -smp "$cpus" -m "$mem" \
  -kernel "$kernel" -initrd "$initrd" \
  -append "root=/dev/vda rw console=ttyS0 quiet wisp.repo=$repo wisp.target=$target wisp.args=${args// /,}" \
  -drive "file=$image,if=virtio,format=raw" \
  $(share "$repo" repo) $(share "$target" target) $(share /root home) $(share /usr/local usrlocal) \
  -nic user,model=virtio-net-pci -display none -serial "file:$vm/console.log" -monitor none \
  || echo "qemu ended with status $? (124: stopped after ${timeout_s}s)" >&2
if [ ! -f "$out/rc" ]; then
  echo "the VM ended without a result; its console:" >&2
  tail -50 "$vm/console.log" >&2
  exit 1
fi
tail -5 "$out/run.log"
exit "$(cat "$out/rc")"
