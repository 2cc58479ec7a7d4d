#!/usr/bin/env bash
# Check out, from local git mirrors, only the files of the official repositories that their model classes need,
# into DEST/<repo>/ (default .official/ beside the project, ignored by git), for benchmarks/bench_gpu.py.
# The official code is read from there at run time and never copied into the project itself.
#
#   benchmarks/prepare_official.sh [MIRRORS [DEST]]      MIRRORS defaults to /work/.mirror
set -euo pipefail

mirrors=${1:-/work/.mirror}
dest=${2:-$(cd "$(dirname "$0")/.." && pwd)/.official}

# repo folder in DEST | mirror folder | files the model classes (and their front-ends) import
specs=(
  "audioset_tagging_cnn|qiuqiangkong+audioset_tagging_cnn|LICENSE.MIT pytorch/models.py pytorch/pytorch_utils.py"
  "psla|YuanGongND+psla|LICENSE src/models/__init__.py src/models/Models.py src/models/HigherModels.py"
  "EfficientAT|fschmid56+EfficientAT|LICENSE models/mn/model.py models/mn/utils.py models/mn/block_types.py models/mn/attention_pooling.py models/preprocess.py helpers/utils.py metadata/class_labels_indices.csv"
  "ast|YuanGongND+ast|LICENSE src/models/__init__.py src/models/ast_models.py"
  "PaSST|kkoutini+PaSST|LICENSE models/passt.py models/preprocess.py models/helpers/vit_helpers.py"
  "HTS-Audio-Transformer|RetroCirce+HTS-Audio-Transformer|LICENSE model/htsat.py model/layers.py config.py utils.py"
)

git_dir() {  # a mirror is either a bare repository or a checkout with .git
  local root=$mirrors/$1
  for candidate in "$root/repo/.git" "$root/repo" "$root/.git" "$root"; do
    if git --git-dir="$candidate" rev-parse --verify -q HEAD >/dev/null 2>&1; then echo "$candidate"; return; fi
  done
  echo "no git mirror of $1 under $mirrors; fetch it first" >&2
  return 1
}

mkdir -p "$dest"
for spec in "${specs[@]}"; do
  IFS='|' read -r name mirror files <<<"$spec"
  gd=$(git_dir "$mirror")
  rm -rf "${dest:?}/$name.tmp"
  mkdir -p "$dest/$name.tmp"
  # shellcheck disable=SC2086  # the file list is meant to split
  git --git-dir="$gd" archive --format=tar HEAD $files | tar -x -C "$dest/$name.tmp"
  git --git-dir="$gd" rev-parse HEAD >"$dest/$name.tmp/COMMIT"
  rm -rf "${dest:?}/$name"
  mv "$dest/$name.tmp" "$dest/$name"
  echo "$name @ $(cut -c1-12 "$dest/$name/COMMIT"): $(echo "$files" | wc -w) files"
done
du -sh "$dest"
