#!/usr/bin/env bash
# Checks what can be checked of the packaging without a Docker engine or a systemd
# boot: the unit passes `systemd-analyze verify`, the .deb holds the right files with
# the right modes, and the Dockerfile runs as a non-root user with a data volume.
set -euo pipefail
cd "$(dirname "$0")/.."
fail() { echo "packaging check failed: $*" >&2; exit 1; }

command -v cargo-deb >/dev/null 2>&1 || cargo install cargo-deb --locked --quiet
# This check is about what the package holds, not how fast its binary runs, so it
# builds without the release profile's link-time optimisation (about six minutes more
# on two cores). A package for use is built with plain `cargo deb`.
CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 cargo deb --quiet >/dev/null
deb=$(ls -t target/debian/easel_*.deb | head -n 1)
listing=$(dpkg-deb -c "$deb")
echo "$listing"
for want in \
  "-rwxr-xr-x 0/0 .* ./usr/bin/easel" \
  "-rw-r--r-- 0/0 .* ./lib/systemd/system/easel.service" \
  "-rw-r----- 0/0 .* ./etc/easel/easel.toml" \
  "-rw-r--r-- 0/0 .* ./usr/share/doc/easel/config.example.toml" \
  "-rw-r--r-- 0/0 .* ./usr/share/doc/easel/README.md"; do
  echo "$listing" | grep -Eq -- "$want" || fail "the .deb lacks $want"
done
control=$(dpkg-deb -I "$deb")
echo "$control" | grep -q "postinst" || fail "the .deb has no postinst"
echo "$control" | grep -q "/etc/easel/easel.toml" || echo "$control" | grep -q "conffiles" || fail "easel.toml is not a conffile"

# The packaged config is valid for this binary.
./target/release/easel --config packaging/easel.toml config check >/dev/null || fail "packaging/easel.toml does not load"

if command -v systemd-analyze >/dev/null 2>&1; then
  tmp=$(mktemp -d)
  sed "s#/usr/bin/easel#$PWD/target/release/easel#" packaging/easel.service > "$tmp/easel.service"
  out=$(systemd-analyze verify "$tmp/easel.service" 2>&1) || fail "systemd-analyze verify: $out"
  # A missing `easel` user is expected here (the package creates it); anything else is not.
  if echo "$out" | grep -v "easel" | grep -qi "unknown\|invalid\|failed"; then fail "systemd-analyze: $out"; fi
  rm -rf "$tmp"
  echo "systemd-analyze verify: ok"
else
  echo "systemd-analyze not installed; unit not verified"
fi

grep -Eq '^USER easel' packaging/Dockerfile || fail "the Dockerfile must run as the easel user"
grep -Eq '^VOLUME \["/var/lib/easel"\]' packaging/Dockerfile || fail "the Dockerfile must declare the data volume"
grep -Eq '^FROM .* AS build' packaging/Dockerfile || fail "the Dockerfile must be multi-stage"
echo "packaging checks passed"
