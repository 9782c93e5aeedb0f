#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
#
# copyright.sh SRC: the package's copyright file, from SRC's NOTICE (pepsal's
# licences and those of every module linked into the binary) and its
# licence texts; the texts Debian keeps in /usr/share/common-licenses are
# named there instead of copied. A tree without them says so.
set -eu
src=$1
echo "pepsal: a transparent TCP performance-enhancing proxy steered by eBPF."
# The years of the history, or of the build outside git.
years=$(git -C "$src" log --format=%ad --date=format:%Y 2>/dev/null | sed -n '1h; $G; $s/\n/ /p' || true)
# shellcheck disable=SC2086 # two words: the first year and the last
set -- $years
if [ $# -eq 2 ] && [ "$1" != "$2" ]; then
	years=$1-$2
else
	years=${1:-$(date -u -d "@${SOURCE_DATE_EPOCH:-$(date +%s)}" +%Y)}
fi
echo "Copyright $years the pepsal authors."
echo
if [ ! -e "$src/LICENSE" ] && [ ! -e "$src/NOTICE" ]; then
	echo "This build's source tree holds no LICENSE or NOTICE: its licence is not stated."
	exit 0
fi
# The terms of the Apache License 2.0, which NOTICE holds verbatim for each
# module under it, are in /usr/share/common-licenses: named there instead
# (the appendix and any notice after the terms stay).
apache_terms() {
	awk '
		/^ *Apache License$/ { head = $0; next }
		head != "" && /Version 2\.0, January 2004/ { skip = 1; head = "" }
		head != "" { print head; head = "" }
		skip && /END OF TERMS AND CONDITIONS/ {
			print "   Apache License, Version 2.0: see /usr/share/common-licenses/Apache-2.0"
			skip = 0
			next
		}
		!skip
	' "$1"
}
if [ -e "$src/NOTICE" ]; then
	apache_terms "$src/NOTICE"
	echo
fi
# common is the copy in /usr/share/common-licenses of an SPDX licence, if any.
common() {
	case $1 in
	Apache-2.0) echo Apache-2.0 ;;
	GPL-2.0-only | GPL-2.0-or-later) echo GPL-2 ;;
	GPL-3.0-only | GPL-3.0-or-later) echo GPL-3 ;;
	LGPL-2.1-only | LGPL-2.1-or-later) echo LGPL-2.1 ;;
	MPL-2.0) echo MPL-2.0 ;;
	esac
}
texts=
[ -d "$src/LICENSES" ] && texts=$(ls "$src"/LICENSES/*.txt 2>/dev/null || true)
if [ -z "$texts" ] && [ -e "$src/LICENSE" ]; then
	echo "=============================================================================="
	echo "LICENSE"
	echo "=============================================================================="
	cat "$src/LICENSE"
fi
for f in $texts; do
	id=$(basename "$f" .txt)
	echo "=============================================================================="
	if c=$(common "$id") && [ -n "$c" ]; then
		echo "$id: see /usr/share/common-licenses/$c"
	else
		echo "$id"
		echo "=============================================================================="
		cat "$f"
	fi
done
