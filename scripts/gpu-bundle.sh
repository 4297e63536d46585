#!/usr/bin/env bash
# Bundles the Debian libraries that ratiod and ratio-worker need (not LibTorch) into .deps/root,
# for a GPU machine that has PyTorch but no package manager access. Run here; copy .deps along.
set -euo pipefail
cd "$(dirname "$0")/.."
PKGS=(libyaml-cpp-dev libyaml-cpp0.7 libspdlog-dev libspdlog1.10 libfmt-dev libfmt9
      libcpp-httplib-dev libcpp-httplib0.11 nlohmann-json3-dev libsqlite3-dev libsqlite3-0
      libbrotli1 libbrotli-dev libssl-dev libssl3 zlib1g-dev libgtest-dev googletest
      libicu-dev libicu72    # ICU's letter and number classes for the GPT-2 tokenizer (worker/tokenizer.cpp)
      fortunes fortunes-min)  # the demo corpus: GPU machines run Ubuntu without it
mkdir -p .deps/debs .deps/root
if [ -z "$(ls .deps/debs/*.deb 2>/dev/null)" ]; then
  apt-get update -qq || true
  (cd .deps/debs && apt-get download "${PKGS[@]}")
fi
for deb in .deps/debs/*.deb; do dpkg -x "$deb" .deps/root; done
# Some packages ship absolute symlinks (libz.so -> /lib/...): point them inside the bundle.
find .deps/root -type l -lname '/*' | while read -r link; do
  target=$(readlink "$link")
  for candidate in ".deps/root$target" ".deps/root/usr$target"; do
    if [ -e "$candidate" ]; then
      ln -sfn "$(realpath --relative-to="$(dirname "$link")" "$candidate")" "$link"
      break
    fi
  done
done
# Static archives (but GoogleTest's), docs and man pages are not needed to build or run: keep the
# bundle small, since it travels with the working tree.
find .deps/root -name '*.a' ! -name 'libgtest*' ! -name 'libgmock*' -delete
rm -rf .deps/root/usr/share/doc .deps/root/usr/share/man
# GoogleTest's sources (libgtest.a is kept) and the ICU libraries the tokenizer does not link: ICU's
# 30 MB of data is what the bundle cannot drop, and a device call carries 64 MiB in all.
rm -rf .deps/root/usr/src/googletest .deps/root/usr/bin .deps/root/usr/lib/x86_64-linux-gnu/icu
rm -f .deps/root/usr/lib/x86_64-linux-gnu/libicu{i18n,io,test,tu}.so*
du -sh .deps/root
