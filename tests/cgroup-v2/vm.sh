#!/usr/bin/env bash
# Runs Wisp's tests on a cgroup v2 host: a Debian 13 (trixie) virtual machine — kernel 6.12,
# systemd's default unified cgroup hierarchy (cgroup v2 only), Docker 26 from Debian's
# docker.io — that is, the machine a developer has today, started here with qemu.
#
# The VM mounts this checkout, the cargo target directory, /root (rustup's toolchains,
# cargo's registry cache) and /usr/local (cargo-nextest) from this machine over 9p at the
# same paths, so it reuses what was built here; its own disk (ext4) holds the system, Docker's
# state and the privileged tests' swapfile. Inside, tests/cgroup-v2/in-vm.sh checks that the
# VM really is cgroup v2 only (and its Docker engine too), then runs the tests.
#
# Usage (root):
#   tests/cgroup-v2/vm.sh [--privileged-tests]   # the whole test command, tests/run.sh
#   tests/cgroup-v2/vm.sh --cgroup-tests         # only the tests whose behaviour depends on the
#       cgroup version, built here first: the swap tests (sandboxes/wasm/tests/swap.rs: on v2
#       they reclaim through memory.reclaim), every test of the Docker sandbox (memory and
#       swap limits, OOM kills, pids limits, isolation, pulls) and the node agent's on Docker
#       (tests/e2e/tests/node_agent_docker.rs), with the privileged opt-in
#   tests/cgroup-v2/vm.sh --prepare              # only build the VM's image
#   WISP_VM_ACCEL     kvm (default, needs /dev/kvm) or tcg (software emulation: several times
#                     slower, for machines whose KVM cannot run this guest — nested KVM on
#                     this project's CI VMs; use it with --cgroup-tests)
#   WISP_VM_DIR       where the image is built and kept (default /var/tmp/wisp-cgroup-v2-vm)
#   WISP_VM_MEMORY    the VM's memory (default 12G); WISP_VM_CPUS (default: this machine's)
#   WISP_VM_TIMEOUT   seconds before the VM is stopped (default 5400)
#   WISP_VM_TESTS     with --cgroup-tests: only the test executables matching this pattern
# Output: the run's log in <target dir>/cgroup-v2-vm/run.log, the console in $WISP_VM_DIR;
# exits with the tests' status.
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
accel="${WISP_VM_ACCEL:-kvm}"
prepare=false mode=full
case "${1:-}" in
  --prepare) prepare=true; shift ;;
  --cgroup-tests) mode=cgroup; shift ;;
esac
args="$*"

[ "$(id -u)" -eq 0 ] || { echo "tests/cgroup-v2/vm.sh needs root (debootstrap, 9p passthrough)" >&2; exit 2; }
case "$accel" in
  kvm) [ -w /dev/kvm ] || { echo "WISP_VM_ACCEL=kvm needs /dev/kvm (or set WISP_VM_ACCEL=tcg)" >&2; exit 2; }
       machine=(-enable-kvm -cpu "${WISP_VM_CPU_MODEL:-host,-arch-capabilities}") ;;
  # One vCPU under TCG: with two, the guest kernel's live code patching (int3-based, when a
  # cgroup's CPU bandwidth turns a static key on) raced and panicked it.
  tcg) machine=(-accel tcg -cpu max); cpus="${WISP_VM_CPUS:-1}" ;;
  *) echo "WISP_VM_ACCEL must be kvm or tcg" >&2; exit 2 ;;
esac
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v zstd >/dev/null || need+=(zstd)
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
initrd="$(ls "$root"/boot/initrd.img-* | sort -V | tail -1)"
# The kernel booted straight at its PVH entry (an ELF vmlinux, out of Debian's zstd-packed
# bzImage): under nested KVM the bzImage's own decompressor stops on an instruction KVM
# cannot emulate.
kernel="$vm/vmlinux"
if [ ! -s "$kernel" ]; then
  bz="$(ls "$root"/boot/vmlinuz-* | sort -V | tail -1)"
  at="$(LC_ALL=C grep -obUaP '\x28\xb5\x2f\xfd' "$bz" | head -1 | cut -d: -f1)"
  tail -c +"$((at + 1))" "$bz" | zstd -dcq > "$kernel" 2>/dev/null || true
  [ -s "$kernel" ] || { echo "cannot unpack the kernel $bz" >&2; exit 1; }
fi

out="$target/cgroup-v2-vm"
rm -rf "$out"
mkdir -p "$out"
if [ "$mode" = cgroup ]; then
  echo "== building the tests that depend on the cgroup version (here, not in the VM)"
  bash tests/build-guests.sh >/dev/null
  bash examples/container-echo/build-image.sh >/dev/null
  # Each test executable with the directory cargo would run it in (its package's). Built for
  # the whole workspace, as tests/run.sh builds them (the same features: nothing rebuilt).
  cargo test --locked --workspace --all-features --no-run --message-format=json 2>/dev/null |
    python3 -c '
import json, os, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") != "compiler-artifact" or not m.get("executable") or not m["profile"]["test"]:
        continue
    name, target = m["package_id"], m["target"]["name"]
    if ("wisp-sandbox-docker" in name or "sandboxes/docker" in name) or target in ("swap", "node_agent_docker"):
        print(m["executable"] + "\t" + os.path.dirname(m["manifest_path"]))' > "$out/tests.list"
  # WISP_VM_TESTS: only the executables whose path matches this pattern (grep -E).
  if [ -n "${WISP_VM_TESTS:-}" ]; then
    grep -E "${WISP_VM_TESTS}" "$out/tests.list" > "$out/tests.only" || true
    mv "$out/tests.only" "$out/tests.list"
  fi
  [ -s "$out/tests.list" ] || { echo "no test executables were built" >&2; exit 1; }
  cat "$out/tests.list"
fi
echo "== booting the VM ($cpus CPUs, $mem; console in $vm/console.log; log in $out/run.log)"
share() { echo "-virtfs local,path=$1,mount_tag=$2,security_model=passthrough,id=$2"; }
# shellcheck disable=SC2046
timeout --foreground "$timeout_s" qemu-system-x86_64 "${machine[@]}" -smp "$cpus" -m "$mem" \
  -kernel "$kernel" -initrd "$initrd" \
  -no-reboot -append "root=/dev/vda rw console=ttyS0 quiet panic=1 wisp.repo=$repo wisp.target=$target wisp.mode=$mode wisp.args=${args// /,}" \
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
