#!/usr/bin/env bash
# The Debian package end to end, as CI can run it: build ratio_<version>_amd64.deb with CPack from
# the build tree, unpack it into a temporary root (dpkg -x, no root needed), check its metadata, then
# run the packaged ratiod the way the packaged systemd unit does (ExecStart with the packaged
# /etc/ratio/ratiod.yaml, paths moved into the temporary root) and the demo preset to the end.
# With RATIO_PACKAGE_TEST_DPKG_I=1 (as root, on a disposable machine) it also runs `dpkg -i`.
# usage: tests/package/package_test.sh BUILD_DIR
set -euo pipefail

BUILD=$(cd "${1:?usage: package_test.sh BUILD_DIR}" && pwd)
WORK=$(mktemp -d -t ratio-package-test.XXXXXX)
DAEMON_PID=""
cleanup() {
  if [[ -n "$DAEMON_PID" ]]; then kill -TERM "$DAEMON_PID" 2>/dev/null || true; wait "$DAEMON_PID" || true; fi
  if [[ "${KEEP:-0}" != 1 ]]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT
fail() { echo "package test: $*" >&2; exit 1; }

echo "package test: cpack -G DEB"
(cd "$BUILD" && cpack -G DEB -B "$WORK/out" >"$WORK/cpack.log" 2>&1) || { cat "$WORK/cpack.log" >&2; fail "cpack failed"; }
VERSION=$(sed -n 's/^set(CPACK_PACKAGE_VERSION "\(.*\)")$/\1/p' "$BUILD/CPackConfig.cmake")
DEB="$WORK/out/ratio_${VERSION}_amd64.deb"
[[ -f "$DEB" ]] || fail "no $DEB; cpack made: $(ls "$WORK/out")"
echo "package test: $(basename "$DEB"), $(du -k "$DEB" | cut -f1) KiB"

# Metadata: Depends from dpkg-shlibdeps (LibTorch among them), the maintainer scripts, the conffile.
DEPENDS=$(dpkg-deb -f "$DEB" Depends)
for dep in libtorch libyaml-cpp libsqlite3 libspdlog libcpp-httplib fortunes; do
  [[ "$DEPENDS" == *"$dep"* ]] || fail "Depends lacks $dep: $DEPENDS"
done
dpkg-deb --ctrl-tarfile "$DEB" | tar -t | grep -qx './postinst' || fail "no postinst"
[[ "$(dpkg-deb --info "$DEB" conffiles)" == "/etc/ratio/ratiod.yaml" ]] || fail "conffiles is not /etc/ratio/ratiod.yaml"

ROOT="$WORK/root"
dpkg-deb -x "$DEB" "$ROOT"
for f in usr/bin/ratiod usr/bin/ratio usr/bin/ratio-worker usr/share/ratio/web/index.html \
         usr/share/ratio/gpt2/encoder.json lib/systemd/system/ratiod.service etc/ratio/ratiod.yaml \
         usr/share/man/man1/ratiod.1.gz usr/share/man/man1/ratio.1.gz usr/share/man/man1/ratio-worker.1.gz; do
  [[ -e "$ROOT/$f" ]] || fail "the package lacks /$f"
done
zcat "$ROOT/usr/share/man/man1/ratiod.1.gz" | grep -qF -- '\-\-config' || fail "ratiod's man page lacks --config"
for tool in ratio ratiod ratio-worker; do
  "$ROOT/usr/bin/$tool" --version | head -n 1 | grep -qx "$tool $VERSION" || fail "$tool --version is not '$tool $VERSION'"
done

# The unit's command line by hand: its ExecStart, with the packaged config moved into ROOT and the
# state folder (the config's /var/lib/ratio) in WORK by flags, which override the file.
UNIT="$ROOT/lib/systemd/system/ratiod.service"
grep -qx 'Type=notify' "$UNIT" || fail "the unit is not Type=notify"
EXEC=$(sed -n 's/^ExecStart=//p' "$UNIT")
[[ "$EXEC" == "/usr/bin/ratiod --config /etc/ratio/ratiod.yaml" ]] || fail "unexpected ExecStart: $EXEC"
read -r -a COMMAND <<<"${EXEC//\/usr\/bin\//$ROOT/usr/bin/}"
COMMAND=("${COMMAND[@]//\/etc\/ratio\//$ROOT/etc/ratio/}")
STATE="$WORK/var-lib-ratio"
mkdir -p "$STATE"
"${COMMAND[@]}" --db "$STATE/ratio.db" --data-dir "$STATE/data" --listen 127.0.0.1:0 --slots cpu:1 \
  >"$WORK/ratiod.out" 2>"$WORK/ratiod.log" &
DAEMON_PID=$!
for _ in $(seq 1 100); do
  grep -q "listening on" "$WORK/ratiod.out" && break
  kill -0 "$DAEMON_PID" 2>/dev/null || { cat "$WORK/ratiod.log" >&2; fail "the packaged ratiod exited at start"; }
  sleep 0.1
done
URL=$(sed -n 's/^ratiod listening on //p' "$WORK/ratiod.out")
[[ -n "$URL" ]] || fail "the packaged ratiod did not start; log: $(cat "$WORK/ratiod.log")"
grep -q "worker $ROOT/usr/bin/ratio-worker" "$WORK/ratiod.log" || fail "ratiod does not use the packaged worker"
# The dashboard comes from the package's share/ratio/web.
python3 -c 'import sys, urllib.request; sys.exit(b"<html" not in urllib.request.urlopen(sys.argv[1]).read())' \
  "$URL/" || fail "no dashboard at $URL/"

echo "package test: packaged ratiod on $URL runs the demo preset"
export RATIO_SERVER="$URL"
MATRIX=$("$ROOT/usr/bin/ratio" submit --preset demo | tail -n 1)
"$ROOT/usr/bin/ratio" status "$MATRIX" --watch --interval 2 || { cat "$WORK/ratiod.log" >&2; fail "the demo matrix did not succeed"; }
"$ROOT/usr/bin/ratio" results "$MATRIX"
kill -TERM "$DAEMON_PID"
wait "$DAEMON_PID" || fail "the packaged ratiod did not stop cleanly"
DAEMON_PID=""

if [[ "${RATIO_PACKAGE_TEST_DPKG_I:-0}" == 1 ]]; then
  echo "package test: dpkg -i (RATIO_PACKAGE_TEST_DPKG_I=1)"
  dpkg -i "$DEB"
  getent passwd ratio >/dev/null || fail "postinst made no ratio user"
  /usr/bin/ratiod --version
fi
echo "package test: passed ($SECONDS s)"
