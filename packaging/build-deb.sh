#!/usr/bin/env bash
# Build the `ns-metadata` Debian package: the three binaries, the man pages and shell
# completions generated from their clap definitions (ns-metadata-gen), then cargo-deb with
# `--no-build` (the package's contents are in crates/spawner/Cargo.toml [package.metadata.deb]).
#
#   packaging/build-deb.sh                      # release build (what to ship), .deb in target/debian/
#   packaging/build-deb.sh --profile dev --no-build -o DIR   # CI: the test build's binaries
#
# Prints the path of the .deb on its last line. Needs cargo-deb (packaging/README.md: pinned
# version). Honours CARGO_TARGET_DIR.
# ci-programs: cargo cargo-deb ns-metadata-gen gzip strip objcopy dpkg-shlibdeps
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
build=1
out=
while [ $# -gt 0 ]; do
  case $1 in
    --profile) profile=${2:?--profile needs a value}; shift 2 ;;
    --no-build) build=0; shift ;;
    -o) out=${2:?-o needs a directory}; shift 2 ;;
    *) echo "build-deb.sh: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done

crates=(-p ns-metadata-spawner -p ns-metadata-proxy -p ns-metadata-agent -p ns-metadata-gen)
if [ "$build" = 1 ]; then
  cargo build --locked --profile "$profile" --bins "${crates[@]}" >&2
fi

target=${CARGO_TARGET_DIR:-$PWD/target}
case $profile in dev) dir=$target/debug ;; *) dir=$target/$profile ;; esac
for bin in ns-metadata-spawner ns-metadata-proxy ns-metadata-agent ns-metadata-gen; do
  [ -x "$dir/$bin" ] || { echo "build-deb.sh: $dir/$bin is missing (build it, or drop --no-build)" >&2; exit 1; }
done

# The same definitions the binaries' --help prints: regenerate every time, never stale.
rm -rf "$dir/generated"
"$dir/ns-metadata-gen" "$dir/generated" >&2
# Debian policy: man pages compressed (cargo-deb compresses only files it did not find under
# target/); -n keeps the build reproducible.
gzip -9n "$dir"/generated/man/*

args=(deb -p ns-metadata-spawner --no-build --profile "$profile")
# The CI build is for a throwaway root: light compression saves a minute of xz; dev is not a
# profile cargo-deb recommends (it warns), but it is the build the tests already made.
[ "$profile" = release ] || args+=(--fast -q)
[ -z "$out" ] || args+=(-o "$out")
cargo "${args[@]}"
