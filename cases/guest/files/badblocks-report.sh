#!/bin/sh
# A user's own reproducer, brought into the guest by a `put` step: it reads
# the pmem block device's badblocks itself and prints them as
# "first-sector count" lines, one per range, then "total N".
set -eu
dev=$1
total=0
while read -r sector count; do
	echo "$sector $count"
	total=$((total + count))
done < "/sys/block/$dev/badblocks"
echo "total $total"
