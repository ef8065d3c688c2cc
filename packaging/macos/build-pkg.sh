#!/bin/bash
# Build the macOS installer, dist/runas-agent-VERSION-ARCH.pkg, on a Mac with the Command Line
# Tools (pkgbuild, productbuild, /usr/bin/python3 3.9+). The agent goes to
# /usr/local/lib/runas-agent and runs on /usr/bin/python3 -I; psutil, PyYAML and structlog are
# vendored for that python3 (psutil is compiled: the .pkg is for this Mac's architecture, and
# its distribution's hostArchitectures makes the installer refuse any other).
#
# Usage: packaging/macos/build-pkg.sh [--version VERSION] [--out DIR] [--stage-only DIR]
#   --version     package version (default: agent/__init__.py's __version__)
#   --out         where the .pkg goes (default: dist/)
#   --stage-only  lay out the payload and installer scripts in DIR and stop: no pip, no
#                 pkgbuild, so it runs on any OS (the test suite checks the layout on Linux)
# Signing: set PKG_SIGN_IDENTITY to a "Developer ID Installer" identity to sign the product.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
pkgdir=$(dirname "$here")
repo=$(dirname "$pkgdir")
ident=org.runas-agent.pkg
label=org.runas-agent.agent
libdir=/usr/local/lib/runas-agent

die() { echo "build-pkg: $*" >&2; exit 2; }

version=""
out="$repo/dist"
stage_only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --version) [ $# -ge 2 ] || die "--version needs a value"; version=$2; shift 2 ;;
    --out) [ $# -ge 2 ] || die "--out needs a value"; out=$2; shift 2 ;;
    --stage-only) [ $# -ge 2 ] || die "--stage-only needs a directory"; stage_only=$2; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done
if [ -z "$version" ]; then
  version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$repo/agent/__init__.py")
fi
[[ "$version" =~ ^[0-9][0-9A-Za-z.+~]*$ ]] || die "invalid version: '$version'"

if [ -n "$stage_only" ]; then
  work=$stage_only
  mkdir -p "$work"
else
  [ "$(uname -s)" = Darwin ] || die "a .pkg is built on macOS (use --stage-only elsewhere)"
  for tool in pkgbuild productbuild /usr/bin/python3; do
    command -v "$tool" >/dev/null || die "$tool is missing (xcode-select --install)"
  done
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
fi
umask 022
root="$work/root"
scripts="$work/scripts"
mkdir -p "$root" "$scripts"

# Payload: the agent, its launcher, the launchd job, the man page and the default config (copied
# to /etc/runas-agent/config.yaml by postinstall only when there is none: upgrades keep edits).
(cd "$repo" && find agent -type f -name '*.py' | LC_ALL=C sort) | while read -r f; do
  mkdir -p "$(dirname "$root$libdir/$f")"
  cp "$repo/$f" "$root$libdir/$f"
done
sed -i.orig "s/^__version__ = .*/__version__ = \"$version\"/" "$root$libdir/agent/__init__.py"
rm -f "$root$libdir/agent/__init__.py.orig"
mkdir -p "$root/usr/local/bin"
sed "s#@LIBDIR@#$libdir#g" "$pkgdir/runas-agent.in" > "$root/usr/local/bin/runas-agent"
chmod 0755 "$root/usr/local/bin/runas-agent"
mkdir -p "$root/Library/LaunchDaemons"
cp "$repo/launchd/$label.plist" "$root/Library/LaunchDaemons/$label.plist"
mkdir -p "$root/usr/local/share/runas-agent"
"$here/config.sh" < "$pkgdir/config.yaml" > "$root/usr/local/share/runas-agent/config.yaml"
cp "$here/uninstall.sh" "$root$libdir/uninstall.sh"
chmod 0755 "$root$libdir/uninstall.sh"
mkdir -p "$root/usr/local/share/man/man8"
python3 "$pkgdir/manpage.py" --version "$version" --date "$(date -u +%Y-%m-%d)" \
  > "$root/usr/local/share/man/man8/runas-agent.8"
for script in preinstall postinstall; do
  cp "$here/scripts/$script" "$scripts/"
  chmod 0755 "$scripts/$script"
done

if [ -n "$stage_only" ]; then
  echo "$root"
  exit 0
fi

# Libraries macOS's python3 lacks, built for it (structlog hash-pinned as for the .rpm).
pip=(/usr/bin/python3 -m pip install --quiet --disable-pip-version-check --no-compile
     --only-binary=:all: --target "$root$libdir/vendor")
"${pip[@]}" --require-hashes --no-deps -r "$pkgdir/vendor.txt"
"${pip[@]}" --no-deps -r "$here/requirements.txt"

mkdir -p "$out"
component="$work/runas-agent-component.pkg"
pkgbuild --root "$root" --scripts "$scripts" --identifier "$ident" --version "$version" \
  --install-location / --ownership recommended "$component"
arch=$(uname -m)
product=("$out/runas-agent-$version-$arch.pkg")
sign=()
if [ -n "${PKG_SIGN_IDENTITY:-}" ]; then
  sign=(--sign "$PKG_SIGN_IDENTITY")
fi
# psutil is compiled for this Mac's architecture: the installer refuses other ones
# (hostArchitectures), instead of installing a daemon that cannot import it.
dist="$work/distribution.xml"
productbuild --synthesize --package "$component" "$dist"
if grep -q 'hostArchitectures=' "$dist"; then
  sed -i.orig "s/hostArchitectures=\"[^\"]*\"/hostArchitectures=\"$arch\"/" "$dist"
else
  sed -i.orig "s#<installer-gui-script \([^>]*\)>#&<options hostArchitectures=\"$arch\"/>#" "$dist"
fi
rm -f "$dist.orig"
grep -q "hostArchitectures=\"$arch\"" "$dist" || die "cannot set hostArchitectures in $dist"
productbuild --distribution "$dist" --package-path "$work" --identifier "$ident" \
  --version "$version" ${sign[@]+"${sign[@]}"} "${product[0]}"
echo "${product[0]}"
