#!/bin/sh
# Build the RPM from the files git knows (committed or not): make rpm.
# Usage: packaging/rpm/build.sh OUTDIR
set -e
out=$(realpath -m "${1:-build/rpm}")
top=$(git rev-parse --show-toplevel)
version=$(sed -n 's/^Version: *//p' "$top/packaging/rpm/seamless-systemd.spec")
rm -rf "$out"
mkdir -p "$out/SOURCES" "$out/stage/seamless-systemd-$version"
cd "$top"
git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$out/stage/seamless-systemd-$version"
tar -C "$out/stage" -czf "$out/SOURCES/seamless-systemd-$version.tar.gz" "seamless-systemd-$version"
rpmbuild -bb --nodeps --define "_topdir $out" packaging/rpm/seamless-systemd.spec
