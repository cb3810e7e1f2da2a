#!/usr/bin/env bash
# Inside the VM of tests/cgroup-v2/vm.sh (run by its wisp-tests.service, which powers the VM
# off afterwards): mounts the host's directories at their host paths, checks that this
# machine is cgroup v2 only, and runs tests/run.sh, leaving its log and status in
# <target dir>/cgroup-v2-vm/.
set -uo pipefail
arg() { tr ' ' '\n' < /proc/cmdline | sed -n "s/^wisp\.$1=//p"; }
repo="$(arg repo)" target="$(arg target)" args="$(arg args)" mode="$(arg mode)"
mount9p() { mkdir -p "$2" && mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 "$1" "$2"; }
# The service mounted the checkout at /mnt/repo (a 9p tag mounts once): bound at its host path.
mkdir -p "$repo" && mount --bind /mnt/repo "$repo" || exit 1
mount9p target "$target" && mount9p home /root && mount9p usrlocal /usr/local || exit 1
out="$target/cgroup-v2-vm"
mkdir -p "$out"
exec > >(tee "$out/run.log") 2>&1
echo "== this machine: $(uname -r), $(. /etc/os-release && echo "$PRETTY_NAME"), /sys/fs/cgroup is $(stat -fc %T /sys/fs/cgroup)"
rc=0
if [ "$(stat -fc %T /sys/fs/cgroup)" != cgroup2fs ] || grep -qv '^0::' /proc/self/cgroup; then
  echo "ERROR: this VM is not cgroup v2 only:"; cat /proc/self/cgroup; rc=1
fi
docker info --format 'Docker engine {{.ServerVersion}}, cgroup v{{.CgroupVersion}} ({{.CgroupDriver}})' || rc=1
cd "$repo"
export CARGO_TARGET_DIR="$target" CARGO_TERM_COLOR=never CI=true
if [ "$rc" -ne 0 ]; then
  :
elif [ "$mode" = cgroup ]; then
  # The executables vm.sh built, each in its package's directory, with the privileged opt-in.
  export WISP_PRIVILEGED_TESTS=1
  # A clean engine (the disk is kept between runs; a run that was stopped leaves containers).
  containers="$(docker ps -aq)"
  [ -z "$containers" ] || docker rm -f $containers >/dev/null
  docker network prune -f >/dev/null
  while IFS=$'\t' read -r bin dir; do
    echo "== $bin"
    (cd "$dir" && "$bin" --test-threads 1) || rc=1
  done < "$out/tests.list"
else
  # shellcheck disable=SC2086
  bash tests/run.sh ${args//,/ }
  rc=$?
fi
echo "== the $mode tests on cgroup v2 ended with status $rc"
echo "$rc" > "$out/rc"
sync
