# Stage 2, PID 1 on the overlay root: a minimal system (what systemd would
# mount), the kernel's own modules, then the runner; power off at the end.
out=$1
export PATH=/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 TERM=dumb GOTOOLCHAIN=local GOPROXY=off
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p /run/lock
# /tmp stays the overlay's: a tmpfs there would hide the results directory
# when it is under /tmp.
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf -o mode=700 bpf /sys/fs/bpf
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
poweroff() {
	sync
	echo o >/proc/sysrq-trigger
	sleep 30
}
# guest.env (written by the host): MODULES, NOFILE, RUNNER, PLAN.
if ! . "$out/guest.env"; then
	echo "kmatrix stage 2: no $out/guest.env" >/dev/console
	poweroff
fi
mkdir -p /lib/modules && ln -sfn "$MODULES" "/lib/modules/$(uname -r)"
echo /sbin/modprobe >/proc/sys/kernel/modprobe
hostname kmatrix
ip link set lo up
ulimit -n "$NOFILE"
"$RUNNER" --plan "$PLAN" guest >"$out/guest.log" 2>&1
echo $? >"$out/guest.exit"
dmesg >"$out/dmesg.log"
poweroff
