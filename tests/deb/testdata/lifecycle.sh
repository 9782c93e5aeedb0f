#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
#
# lifecycle.sh OLD.deb NEW.deb WORKDIR HOSTBIN: a package's life on a router
# (install, a live upgrade under a running daemon, remove, purge), run by
# TestPackageLifecycle in its own mount, network and PID namespaces
# (unshare), so that the host is never touched: /usr, /etc and /var are
# overlays whose changes go to a tmpfs, /run is an empty tmpfs, and the
# kernel kills every process left when this script, PID 1 there, exits.
# systemd is a stand-in: /run/systemd/system exists and systemctl is a
# script that logs its calls, says the service is active while the test's
# daemon runs, and signals that daemon for reload and stop, as the unit
# would. Each check prints "ok: ..." or fails with "FAIL: ...".
set -euo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8
old=$1 new=$2 work=$3 hostbin=$4
fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }
echo "netns $(readlink /proc/self/ns/net)" # the test removes its pins if this script is killed

cleanup() {
	kill -KILL -1 2>/dev/null || true # every other process of this PID namespace
	"$hostbin" detach >/dev/null 2>&1 || echo "cleanup: detach failed" >&2
}
trap cleanup EXIT

mount -t tmpfs pepsal-deb-test "$work"
for d in usr etc var; do
	mkdir -p "$work/$d/upper" "$work/$d/work"
	mount -t overlay overlay -o "lowerdir=/$d,upperdir=$work/$d/upper,workdir=$work/$d/work" "/$d"
done
mount -t tmpfs pepsal-deb-run /run
# A router installs documentation: drop the path-exclude lines of a
# trimmed image (in this overlay only).
sed -i '/^path-exclude/d' /etc/dpkg/dpkg.cfg.d/* 2>/dev/null || true

mkdir -p /run/systemd/system
cat >/usr/bin/systemctl <<'STUB'
#!/bin/sh
echo "$*" >>/run/systemctl.log
daemon() { /usr/sbin/pepsal status --json 2>/dev/null | sed -n 's/^    "pid": \([0-9]*\),$/\1/p' | head -n 1; }
case "$*" in
"is-active --quiet pepsal.service") [ -e /run/pepsal.active ] ;;
"reload pepsal.service") kill -HUP "$(daemon)" ;;
"stop pepsal.service")
	pid=$(daemon)
	kill -TERM "$pid"
	while [ -e "/proc/$pid" ] && ! grep -q ') Z' "/proc/$pid/stat"; do sleep 0.1; done
	rm -f /run/pepsal.active ;;
esac
exit 0
STUB
chmod 0755 /usr/bin/systemctl

# What the package ships, and which of those paths the system had before.
dpkg-deb --fsys-tarfile "$new" | tar -t | sed -e 's#^\./#/#' -e 's#/$##' | grep -v '^\.\?$' >"$work/files"
while read -r f; do [ -e "$f" ] && echo "$f"; done <"$work/files" >"$work/before" || true

# Install: the unit is known to systemd, the service neither enabled nor started.
dpkg -i "$old" >"$work/install.log" 2>&1 || { cat "$work/install.log"; fail "dpkg -i"; }
grep -q "not enabled" "$work/install.log" || fail "postinst says nothing of enabling the service"
[ "$(cat /run/systemctl.log)" = "--system daemon-reload" ] || fail "postinst ran systemctl $(cat /run/systemctl.log)"
ok "installed; postinst ran only systemctl daemon-reload"

v1=$(/usr/sbin/pepsal version)
[ "$(/usr/sbin/pepsal --version)" = "$v1" ] || fail "pepsal --version says $(/usr/sbin/pepsal --version), pepsal version $v1"
ok "$v1 (pepsal version and --version)"
[ "$(stat -c '%U %a' /usr/sbin/pepsal)" = "root 755" ] || fail "/usr/sbin/pepsal: $(stat -c '%U %a' /usr/sbin/pepsal)"

unit=/usr/lib/systemd/system/pepsal.service
# shellcheck disable=SC2016 # the unit's own $PEPSAL_ARGS, as written
grep -qx 'ExecStart=/usr/sbin/pepsal run $PEPSAL_ARGS' "$unit" || fail "$unit runs $(grep ExecStart= "$unit")"
grep -qx 'EnvironmentFile=-/etc/default/pepsal' "$unit" || fail "$unit reads $(grep EnvironmentFile= "$unit")"
grep -q '^Documentation=.* man:pepsal-run(8)$' "$unit" || fail "$unit: $(grep Documentation= "$unit")"
systemd-analyze verify "$unit" || fail "systemd-analyze verify $unit"
ok "systemd-analyze verify $unit"

for cmd in pepsal pepsal-run pepsal-attach pepsal-detach pepsal-status pepsal-conns pepsal-version; do
	[ "$(man -w 8 "$cmd")" = "/usr/share/man/man8/$cmd.8.gz" ] || fail "man -w 8 $cmd: $(man -w 8 "$cmd" 2>&1)"
done
page=$(MANWIDTH=80 man -l /usr/share/man/man8/pepsal-run.8.gz 2>&1)
for want in 'PEPSAL-RUN(8)' 'pepsal run [flags]' '--role="auto"' 'EXAMPLE' 'pepsal run --iface eth0'; do
	grep -qF -- "$want" <<<"$page" || fail "man pepsal-run lacks $want"
done
ok "man pages in section 8; man -l renders pepsal-run(8)"
for f in /usr/share/bash-completion/completions/pepsal /usr/share/zsh/vendor-completions/_pepsal /usr/share/fish/vendor_completions.d/pepsal.fish; do
	grep -q '__complete' "$f" || fail "$f does not ask pepsal __complete"
done
bash -n /usr/share/bash-completion/completions/pepsal || fail "the bash completion does not parse"
ok "completions for bash, zsh and fish"
for f in README.md copyright changelog.Debian.gz; do
	[ -s "/usr/share/doc/pepsal/$f" ] || fail "/usr/share/doc/pepsal/$f missing"
done
[ "$(dpkg-query -W -f='${Conffiles}' pepsal | awk '{print $1}')" = /etc/default/pepsal ] || fail "conffiles: $(dpkg-query -W -f='${Conffiles}' pepsal)"
ok "docs; /etc/default/pepsal is a conffile"

# A daemon serving (started as the unit would), the operator's settings, and
# `systemctl enable pepsal`.
ip link set lo up
ip link add pepsal-d0 type veth peer name pepsal-d1
ip link set pepsal-d0 up
echo 'PEPSAL_ARGS="--iface pepsal-d0"' >>/etc/default/pepsal
mkdir -p /etc/systemd/system/multi-user.target.wants
ln -s "$unit" /etc/systemd/system/multi-user.target.wants/pepsal.service
/usr/sbin/pepsal run --iface pepsal-d0 >"$work/daemon.log" 2>&1 &
for _ in $(seq 100); do /usr/sbin/pepsal status >/dev/null 2>&1 && break; sleep 0.2; done
/usr/sbin/pepsal status >/dev/null || { cat "$work/daemon.log"; fail "the daemon does not serve"; }
touch /run/pepsal.active
ino=$(readlink /proc/self/ns/net | tr -cd 0-9)
[ -d "/sys/fs/bpf/pepsal/netns-$ino" ] || fail "no pins in /sys/fs/bpf/pepsal/netns-$ino"
ok "daemon serving"

# Upgrade: postinst asks the running daemon to upgrade in place; the daemon
# starts the new /usr/sbin/pepsal, which must pass its trust check.
: >/run/systemctl.log
dpkg -i "$new" >"$work/upgrade.log" 2>&1 || { cat "$work/upgrade.log"; fail "dpkg -i (upgrade)"; }
grep -qx 'reload pepsal.service' /run/systemctl.log || fail "postinst did not reload: $(cat /run/systemctl.log)"
v2=$(/usr/sbin/pepsal version)
[ "$v2" != "$v1" ] || fail "the upgrade installed the same version $v1"
for _ in $(seq 150); do
	/usr/sbin/pepsal status --json 2>/dev/null | grep -qF "\"version\": \"${v2#pepsal }\"" && break
	sleep 0.2
done
/usr/sbin/pepsal status --json | grep -qF "\"version\": \"${v2#pepsal }\"" || { cat "$work/daemon.log"; fail "the daemon did not upgrade to $v2"; }
grep -q 'upgrade failed' "$work/daemon.log" && fail "$(grep 'upgrade failed' "$work/daemon.log")"
grep -q 'PEPSAL_ARGS="--iface pepsal-d0"' /etc/default/pepsal || fail "the upgrade lost the operator's /etc/default/pepsal"
ok "upgraded in place to $v2; /etc/default/pepsal kept"

# Remove: the service stops, nothing stays attached, the conffile stays.
: >/run/systemctl.log
dpkg -r pepsal >"$work/remove.log" 2>&1 || { cat "$work/remove.log"; fail "dpkg -r"; }
grep -qx 'stop pepsal.service' /run/systemctl.log || fail "prerm did not stop the service: $(cat /run/systemctl.log)"
[ ! -e /run/pepsal.active ] || fail "the daemon still runs"
[ ! -e "/sys/fs/bpf/pepsal/netns-$ino" ] || fail "pins left in /sys/fs/bpf/pepsal/netns-$ino"
[ -e /etc/default/pepsal ] || fail "dpkg -r removed the conffile"
[ ! -e /usr/sbin/pepsal ] || fail "dpkg -r left /usr/sbin/pepsal"
ok "removed: stopped, detached, conffile kept"

# Purge: nothing of the package is left, and nothing that was there before is gone.
dpkg --purge pepsal >"$work/purge.log" 2>&1 || { cat "$work/purge.log"; fail "dpkg --purge"; }
while read -r f; do
	if grep -qxF -- "$f" "$work/before"; then
		[ -e "$f" ] || fail "purge removed $f, which was there before"
	elif [ -e "$f" ] || [ -L "$f" ]; then
		fail "purge left $f"
	fi
done <"$work/files"
[ ! -L /etc/systemd/system/multi-user.target.wants/pepsal.service ] || fail "purge left the enablement link"
[ -z "$(ls /var/lib/dpkg/info/pepsal.* 2>/dev/null)" ] || fail "dpkg still knows pepsal"
ok "purged: nothing left"
