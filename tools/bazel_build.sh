#!/usr/bin/env bash
# Builds the op library with Bazel, through bazelisk, and copies it to
# build/bazel/_fixed_loss_scale_ops.so, then runs the core's C++ tests
# (//tf_ops/tests:all) (`make bazel` runs this; see docs/BAZEL.md).
#
# Which Bazel bazelisk runs:
#   - USE_BAZEL_VERSION, when you set it (a version bazelisk downloads, or a path);
#   - else Debian's bazel-bootstrap (/usr/bin/bazel-4, Bazel 4.2.3 = .bazelversion),
#     installed with apt when absent and we are root; nothing is downloaded;
#   - else the version in .bazelversion, which bazelisk downloads (needs a network).
# Debian's Bazel has no bundled copies of the rules its own tools load, so for it
# rules_java comes from Debian's bazel-rules-java and rules_cc from the stand-in
# in third_party/rules_cc, and `bazel test`'s remote_coverage_tools from the one in
# third_party/remote_coverage_tools (--override_repository).
# bazelisk comes from npm into .bazelisk/ (gitignored) when it is not on PATH.
#
# Usage: tools/bazel_build.sh [extra `bazel build` arguments]
# Environment:
#   FLS_BAZEL_JOBS=2        --jobs for the build
#   FLS_BAZEL_SHUTDOWN=1    stop the Bazel server when done (tests and CI set it;
#                           otherwise it exits by itself after 5 idle minutes)
#   FLS_BAZEL_REAL=path     Debian's Bazel binary (default /usr/bin/bazel-4)
#   BAZELISK=path           a bazelisk to use instead of PATH / .bazelisk/
# Exit status: 0 built; 3 Bazel or bazelisk is absent and cannot be installed
# here (the message says why); anything else: the build failed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

BAZELISK_NPM_VERSION=1.28.1
BAZELISK_DIR=$ROOT/.bazelisk
DEBIAN_BAZEL=${FLS_BAZEL_REAL:-/usr/bin/bazel-4}
DEBIAN_RULES_JAVA=/usr/share/bazel/rules/java
OUT_DIR=build/bazel
LIB_NAME=_fixed_loss_scale_ops.so

say() { echo "bazel_build: $*" >&2; }
cannot_install() { say "cannot get Bazel here: $*"; exit 3; }
is_root() { [[ $(id -u) == 0 ]]; }

apt_install() {
  is_root || return 1
  command -v apt-get >/dev/null || return 1
  say "installing $* with apt-get"
  DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 || return 1
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >&2 || return 1
}

# ---- configuration: one detection, shared with Make ------------------------
[[ -f .configure.bazelrc ]] || ./configure.sh

# ---- the Bazel to run --------------------------------------------------------
# Debian's build says "bazel no_version"; a released binary says "bazel 4.2.3".
is_debian_bazel() { [[ -x $1 ]] && [[ $("$1" --version 2>/dev/null) == "bazel no_version" ]]; }

overrides=()
if [[ -n ${USE_BAZEL_VERSION:-} ]]; then
  say "USE_BAZEL_VERSION=$USE_BAZEL_VERSION (from the environment)"
  [[ $USE_BAZEL_VERSION == /* ]] && is_debian_bazel "$USE_BAZEL_VERSION" && DEBIAN_BAZEL=$USE_BAZEL_VERSION
else
  if [[ ! -x $DEBIAN_BAZEL ]] && is_root && command -v apt-get >/dev/null; then
    apt_install bazel-bootstrap bazel-rules-java || say "apt-get could not install bazel-bootstrap"
  fi
  if [[ -x $DEBIAN_BAZEL ]]; then
    export USE_BAZEL_VERSION=$DEBIAN_BAZEL
  else
    say "no $DEBIAN_BAZEL: bazelisk will download Bazel $(<.bazelversion) (.bazelversion)"
  fi
fi
if [[ ${USE_BAZEL_VERSION:-} == "$DEBIAN_BAZEL" ]]; then
  if [[ ! -d $DEBIAN_RULES_JAVA ]]; then
    apt_install bazel-rules-java ||
      cannot_install "$DEBIAN_RULES_JAVA is missing (Debian package bazel-rules-java; install it as root)"
  fi
  overrides=(--override_repository=rules_cc="$ROOT/third_party/rules_cc"
             --override_repository=rules_java="$DEBIAN_RULES_JAVA"
             --override_repository=remote_coverage_tools="$ROOT/third_party/remote_coverage_tools")
fi

# ---- bazelisk ----------------------------------------------------------------
find_bazelisk() {
  local candidate
  for candidate in "${BAZELISK:-}" "$BAZELISK_DIR/node_modules/.bin/bazelisk" \
                   "$(command -v bazelisk || true)"; do
    if [[ -n $candidate && -x $candidate ]]; then echo "$candidate"; return 0; fi
  done
  return 1
}
if ! BAZELISK=$(find_bazelisk); then
  if ! command -v npm >/dev/null; then
    apt_install npm || say "npm is not installed and cannot be installed here"
  fi
  if command -v npm >/dev/null; then
    say "installing @bazel/bazelisk@$BAZELISK_NPM_VERSION into $BAZELISK_DIR"
    npm install --prefix "$BAZELISK_DIR" --no-save --no-package-lock --no-audit --no-fund --no-update-notifier \
      --loglevel=error "@bazel/bazelisk@$BAZELISK_NPM_VERSION" >&2 ||
      say "npm could not install @bazel/bazelisk"
  fi
  BAZELISK=$(find_bazelisk) || BAZELISK=""
fi
if [[ -z $BAZELISK ]]; then
  # Same Bazel either way; bazelisk only picks it.
  [[ ${USE_BAZEL_VERSION:-} == /* ]] ||
    cannot_install "no bazelisk (npm package @bazel/bazelisk) and no local Bazel"
  say "WARNING: no bazelisk; running $USE_BAZEL_VERSION directly"
  BAZELISK=$USE_BAZEL_VERSION
fi

# Fails here, before any build, when bazelisk cannot download the Bazel it needs.
if ! version_output=$("$BAZELISK" --version 2>&1); then
  cannot_install "bazelisk could not run Bazel ${USE_BAZEL_VERSION:-$(<.bazelversion)}" \
    "($(tail -n 1 <<<"$version_output")); offline, install Debian's bazel-bootstrap as root"
fi
say "bazelisk: $BAZELISK, Bazel: ${USE_BAZEL_VERSION:-$(<.bazelversion)}"

# ---- build -------------------------------------------------------------------
bazel() { "$BAZELISK" "$@"; }
if [[ ${FLS_BAZEL_SHUTDOWN:-0} == 1 ]]; then
  trap 'bazel shutdown || true' EXIT
fi

rm -f "$OUT_DIR/$LIB_NAME"  # never leave an older build looking like this one
bazel build --jobs="${FLS_BAZEL_JOBS:-2}" "${overrides[@]}" "$@" //:ops_so
bin_dir=$(bazel info "${overrides[@]}" "$@" bazel-bin)
mkdir -p "$OUT_DIR"
install -m 0755 "$bin_dir/tf_ops/$LIB_NAME" "$OUT_DIR/$LIB_NAME"
say "built $OUT_DIR/$LIB_NAME"
# The core's TF-free C++ tests (tf_ops/tests/BUILD): host emulation, sanitizers.
bazel test --jobs="${FLS_BAZEL_JOBS:-2}" --test_output=errors "${overrides[@]}" "$@" //tf_ops/tests:all
say "core C++ tests passed"
