#!/usr/bin/env bash
# Inside the VM of tests/cgroup-v2/vm.sh (run by its wisp-tests.service, which powers the VM
# off afterwards): mounts the host's directories at their host paths, checks that this
# machine is cgroup v2 only, and runs tests/run.sh, leaving its log and status in
# <target dir>/cgroup-v2-vm/.
set -uo pipefail
arg() { tr ' ' '\n' < /proc/cmdline | sed -n "s/^wisp\.$1=//p"; }
repo="$(arg repo)" target="$(arg target)" args="$(arg args)"
mount9p() { mkdir -p "$2" && mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 "$1" "$2"; }
mount9p repo "$repo" && mount9p target "$target" && mount9p home /root && mount9p usrlocal /usr/local || exit 1
out="$target/cgroup-v2-vm"
mkdir -p "$out"
exec > >(tee "$out/run.log") 2>&1
echo "== this machine: $(uname -r), $(. /etc/os-release && echo "$PRETTY_NAME"), /sys/fs/cgroup is $(stat -fc %T /sys/fs/cgroup)"
rc=0
if [ "$(stat -fc %T /sys/fs/cgroup)" != cgroup2fs ] || grep -qv '^0::' /proc/self/cgroup; then
  echo "ERROR: this VM is not cgroup v2 only:"; cat /proc/self/cgroup; rc=1
fi
docker info --format 'Docker engine {{.ServerVersion}}, cgroup v{{.CgroupVersion}} ({{.CgroupDriver}})' || rc=1
if [ "$rc" -eq 0 ]; then
  cd "$repo"
  export CARGO_TARGET_DIR="$target" CARGO_TERM_COLOR=never
  # shellcheck disable=SC2086
  bash tests/run.sh ${args//,/ }
  rc=$?
fi
echo "== tests/run.sh ${args//,/ } on cgroup v2 ended with status $rc"
echo "$rc" > "$out/rc"
sync
