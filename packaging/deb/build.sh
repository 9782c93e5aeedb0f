#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
#
# build.sh ARCH BINARY DOCS VERSION OUTDIR: OUTDIR/pepsal_VERSION_ARCH.deb
# holding BINARY as /usr/sbin/pepsal, the systemd unit, /etc/default/pepsal
# (a conffile), the man pages and completion scripts DOCS holds (written by
# `pepsal gen-docs`, a build with -tags pepsal_gendocs) and the docs.
# `make package` runs it; dpkg-deb is the only tool it needs beyond
# coreutils, sed and gzip. SOURCE_DATE_EPOCH dates the files, the
# changelog and the archive members; DEB_MAINTAINER names the maintainer;
# GIT_VERSION is what `pepsal version` says (for the changelog);
# DEB_COMPRESS is dpkg-deb's compressor (default xz; the tests take gzip,
# ten times faster on the binary).
set -eu
arch=$1 binary=$2 docs=$3 version=$4 out=$5
src=$(cd "$(dirname "$0")/../.." && pwd)
here=$src/packaging/deb
: "${SOURCE_DATE_EPOCH:=$(date +%s)}" "${DEB_MAINTAINER:=pepsal maintainers <maintainers@pepsal.invalid>}"
: "${GIT_VERSION:=$version}" "${DEB_COMPRESS:=xz}"
export SOURCE_DATE_EPOCH
umask 022

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
chmod 0755 "$stage"
doc=/usr/share/doc/pepsal

install -D -m 0755 "$binary" "$stage/usr/sbin/pepsal"
# The unit points at the packaged binary (and at pepsal-run(8) for
# systemctl help); units go under /usr/lib, the same
# directory as /lib on a merged-/usr system (Debian 12 on), where dpkg then
# tracks one name for the file (DEP 17).
mkdir -p "$stage/usr/lib/systemd/system"
sed -e 's#@BINDIR@#/usr/sbin#g' -e 's#@SYSCONFDIR@#/etc#g' -e "s#@DOCDIR@#$doc#g" -e 's#^Documentation=.*#& man:pepsal-run(8)#' \
	"$src/cmd/pepsal/systemd/pepsal.service.in" >"$stage/usr/lib/systemd/system/pepsal.service"
install -D -m 0644 "$src/cmd/pepsal/systemd/pepsal.env" "$stage/etc/default/pepsal"

mkdir -p "$stage/usr/share/man/man8"
for page in "$docs"/man8/*.8; do
	# shellcheck disable=SC2094 # different files: DOCS/man8/X.8 to STAGE/.../X.8.gz
	gzip -9n <"$page" >"$stage/usr/share/man/man8/$(basename "$page").gz"
done
install -D -m 0644 "$docs/completions/pepsal" "$stage/usr/share/bash-completion/completions/pepsal"
install -D -m 0644 "$docs/completions/_pepsal" "$stage/usr/share/zsh/vendor-completions/_pepsal"
install -D -m 0644 "$docs/completions/pepsal.fish" "$stage/usr/share/fish/vendor_completions.d/pepsal.fish"

# README.md stays uncompressed: the unit's Documentation= and pepsal(8) name it.
install -D -m 0644 "$src/README.md" "$stage$doc/README.md"
install -D -m 0644 "$src/DEPLOYING.md" "$stage$doc/DEPLOYING.md" # README links to it
install -D -m 0644 "$here/lintian-overrides" "$stage/usr/share/lintian/overrides/pepsal"
"$here/copyright.sh" "$src" >"$stage$doc/copyright"
chmod 0644 "$stage$doc/copyright"
{
	echo "pepsal ($version) unstable; urgency=medium"
	echo
	echo "  * Built from $GIT_VERSION."
	echo
	echo " -- $DEB_MAINTAINER  $(date -u -R -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n >"$stage$doc/changelog.Debian.gz"

mkdir -p "$stage/DEBIAN"
install -m 0755 "$here/postinst" "$here/prerm" "$here/postrm" "$stage/DEBIAN/"
echo /etc/default/pepsal >"$stage/DEBIAN/conffiles"
(cd "$stage" && find usr -type f | LC_ALL=C sort | xargs md5sum) >"$stage/DEBIAN/md5sums"
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
sed -e "s#@VERSION@#$version#" -e "s#@ARCH@#$arch#" -e "s#@MAINTAINER@#$DEB_MAINTAINER#" -e "s#@SIZE@#$size#" \
	"$here/control.in" >"$stage/DEBIAN/control"
chmod 0644 "$stage/DEBIAN/conffiles" "$stage/DEBIAN/md5sums" "$stage/DEBIAN/control"
find "$stage" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

mkdir -p "$out"
dpkg-deb --root-owner-group "-Z$DEB_COMPRESS" --build "$stage" "$out/pepsal_${version}_$arch.deb" >/dev/null
echo "$out/pepsal_${version}_$arch.deb"
