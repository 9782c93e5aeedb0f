#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
#
# version.sh DESCRIBE EPOCH: the Debian upstream version of a build, from
# `git describe --tags --always --dirty` and the commit's time (Unix
# seconds), so that later builds sort later for dpkg:
#   v1.2.3                -> 1.2.3
#   v1.2.3-rc1            -> 1.2.3~rc1                 (before 1.2.3)
#   v1.2.3-4-gabc1234     -> 1.2.3+git20261207.173605.abc1234
#   abc1234 (no tag yet)  -> 0.0.0~git20261207.173605.abc1234
# and "+dirty" (".dirty" after a +git or ~git part) after a build from
# uncommitted changes: later than the commit's own build. A release is a tag
# vMAJOR.MINOR.PATCH (optionally -rcN, -betaN, -alphaN).
set -eu
describe=$1
epoch=$2
dirty=
case $describe in
*-dirty) dirty=.dirty; describe=${describe%-dirty} ;;
esac
stamp=$(date -u -d "@$epoch" +%Y%m%d.%H%M%S)
tag='^v\{0,1\}\([0-9][0-9]*\(\.[0-9][0-9]*\)*\)\(-\(\(rc\|beta\|alpha\)[0-9]*\)\)\{0,1\}'
if echo "$describe" | grep -q "$tag\$"; then
	echo "$describe" | sed "s/$tag\$/\1~\4/; s/~\$//; s/\$/${dirty:++dirty}/"
elif echo "$describe" | grep -q "$tag-[0-9][0-9]*-g[0-9a-f][0-9a-f]*\$"; then
	echo "$describe" | sed "s/$tag-[0-9][0-9]*-g\([0-9a-f]*\)\$/\1~\4+git$stamp.\6/; s/~+/+/; s/\$/$dirty/"
else
	# No release tag: a commit name (or "dev" outside git), kept to [0-9a-z.].
	commit=$(echo "$describe" | tr -cd '0-9a-z.')
	echo "0.0.0~git$stamp${commit:+.$commit}$dirty"
fi
