#!/usr/bin/env bash
# Runs the Nix package's check phase as closely as Linux allows, so that a test that would
# fail inside a Nix build (on a Mac or on Linux) fails in CI first:
#   - the same source set as nix/package.nix (its fileset leaves out the Nix, docs and CI
#     files), with the crates vendored and cargo offline, as importCargoLock does;
#   - the same command as nixpkgs' cargoCheckHook (pkgs/build-support/rust/hooks/
#     cargo-check-hook.sh):
#       cargo test -j $NIX_BUILD_CORES --release --target <triple> --frozen -- --test-threads=$NIX_BUILD_CORES
#     (buildRustPackage's checkType defaults to its buildType, release);
#   - as an unprivileged user (nobody), under `env -i`, with HOME=/homeless-shelter;
#   - a TMPDIR of more than 100 bytes (a Mac's build directory is long, and macOS allows only
#     104 bytes for a Unix socket path);
#   - no /bin/cat, /bin/sleep, /usr/bin/env, /bin/true, /bin/false or ssh in reach (the
#     Linux sandbox has only /bin/sh): a private mount namespace hides them; PATH holds a
#     compiler, a linker and coreutils, as stdenv's does.
# Needs root (for the mount namespace and to drop to nobody) and the crates of Cargo.lock
# (`cargo vendor`, from crates.io or the local registry cache).
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "$(id -u)" != 0 ]; then
  echo "check-phase.sh: run as root (it drops to nobody itself)" >&2
  exit 1
fi

cores=${NIX_BUILD_CORES:-2}
triple=$(rustc -vV | sed -n 's/^host: //p')
toolchain=$(dirname "$(dirname "$(rustup which cargo 2>/dev/null || command -v cargo)")")

if [ -n "${CHECK_PHASE_WORK:-}" ]; then
  # A fixed directory kept between local runs, so that cargo reuses its build (CI starts
  # fresh). Its target/ survives; everything else is laid anew.
  work=$CHECK_PHASE_WORK
  mkdir -p "$work"
  find "$work" -mindepth 1 -maxdepth 1 ! -name target -exec rm -rf {} +
else
  work=$(mktemp -d /var/tmp/check-phase.XXXXXX)
  trap 'rm -rf "$work"' EXIT
fi
chmod 755 "$work"

# The package's source: tracked (and new, unignored) files minus nix/package.nix's exclusions.
src=$work/source
mkdir -p "$src"
git ls-files -z --cached --others --exclude-standard \
  | grep -zv -E '^(target|result|\.ci|docs|tests/nix|nix|darwin-modules)/|^flake\.(nix|lock)$' \
  | xargs -0 cp --parents -t "$src"

# Vendored crates and a CARGO_HOME that uses them, as nixpkgs' cargoSetupHook configures.
cargo vendor --quiet --locked --versioned-dirs --manifest-path "$src/Cargo.toml" "$work/vendor" >/dev/null
mkdir -p "$work/cargo-home"
cat >"$work/cargo-home/config.toml" <<EOF
[source.crates-io]
replace-with = "vendored-sources"

[source.vendored-sources]
directory = "$work/vendor"
EOF

# A build directory of more than 100 bytes.
tmp=$work/build/nix-build-gitlab-runner-tart-driver-0.1.0.drv-0/a-long-build-directory-as-on-a-mac
mkdir -p "$tmp"
[ "${#tmp}" -ge 100 ] || {
  echo "check-phase.sh: TMPDIR $tmp is only ${#tmp} bytes" >&2
  exit 1
}

# PATH: the toolchain (bind-mounted below: root's home is not readable by nobody), then a
# directory of copies of the tools stdenv provides.
tools=$work/tools
mkdir -p "$tools" "$work/toolchain"
for t in cc gcc ld as ar sh bash cat sleep env true false ls mkdir rm cp mv chmod ln \
  touch head tail wc sort uniq tr cut date dirname basename readlink realpath stat mktemp \
  tee printf echo id sed grep find xargs tar gzip diff awk; do
  p=$(type -P "$t") || continue
  case $t in
    # Copies: the originals are hidden below.
    cat | sleep | env | true | false) cp -L "$p" "$tools/$t" ;;
    # Links: gcc finds its own files relative to where it is installed.
    *) ln -s "$p" "$tools/$t" ;;
  esac
done

target=$work/target
mkdir -p "$target"
chown -R nobody:nogroup "$src" "$work/build"
chown nobody:nogroup "$target"

hidden=()
for f in /bin/cat /bin/sleep /usr/bin/env /bin/true /bin/false /usr/bin/ssh /usr/sbin/sshd; do
  real=$(readlink -f "$f" 2>/dev/null) && [ -e "$real" ] && hidden+=("$real")
done

echo "check phase: cargo test -j $cores --release --target $triple --frozen -- --test-threads=$cores"
echo "  as nobody, TMPDIR=$tmp (${#tmp} bytes), hidden: ${hidden[*]}"
started=$(date +%s)
# shellcheck disable=SC2016 # expanded by the inner shell, from its arguments
unshare --mount --propagation private -- bash -euo pipefail -c '
  toolchain=$1 work=$2 src=$3 tmp=$4 cores=$5 triple=$6 target=$7
  shift 7
  mount --bind "$toolchain" "$work/toolchain"
  for f in "$@"; do mount --bind /dev/null "$f"; done
  cd "$src"
  exec setpriv --reuid=nobody --regid=nogroup --clear-groups -- "$work/tools/env" -i \
    HOME=/homeless-shelter PATH="$work/toolchain/bin:$work/tools" \
    TMPDIR="$tmp" TMP="$tmp" TEMP="$tmp" TEMPDIR="$tmp" NIX_BUILD_TOP="$tmp" \
    NIX_BUILD_CORES="$cores" CARGO_HOME="$work/cargo-home" CARGO_TARGET_DIR="$target" \
    cargo test -j "$cores" --release --target "$triple" --frozen -- --test-threads="$cores"
' check-phase "$toolchain" "$work" "$src" "$tmp" "$cores" "$triple" "$target" "${hidden[@]}"
echo "check phase: passed in $(($(date +%s) - started)) s"
