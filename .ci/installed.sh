#!/usr/bin/env bash
# CI, the installed case: the wheel built from this checkout, installed (not editable) into a fresh environment in a
# temp folder, and every command run from another folder, where no configs/ is: each command's --help, then a tiny
# train on the demo data, evaluate and predict with its checkpoint, and the dataset checker. Any failure fails CI.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "CI (installed): $*" >&2; exit 1; }

# the checkout's files as git sees them (tracked, and new ones not ignored): no .venv, build/ or data goes in
mkdir "$work/src"
(cd "$repo" && git ls-files -z --cached --others --exclude-standard | xargs -0 tar -c) | tar -x -C "$work/src"
python3 -m venv "$work/venv"
pip="$work/venv/bin/pip" py="$work/venv/bin/python"
"$pip" install -q torch==2.14.1 torchvision==0.29.1
"$pip" wheel -q --no-deps -w "$work/dist" "$work/src"
wheels=("$work"/dist/deeplab-*.whl)
[ "${#wheels[@]}" -eq 1 ] || fail "expected one deeplab wheel, found: ${wheels[*]}"
"$pip" install -q "${wheels[0]}"

mkdir "$work/elsewhere"
cd "$work/elsewhere"
configs=$("$py" -c "import deeplab.cli; print(deeplab.cli.CONFIGS)")
case "$configs" in
    "$work/venv/"*) [ -f "$configs/train.yaml" ] || fail "the installed package has no configs: $configs/train.yaml";;
    *) fail "the commands read their configs from $configs, not from the installed package";;
esac

for module in deeplab.train deeplab.evaluate deeplab.predict deeplab.export deeplab.bench deeplab.convert \
              deeplab.data.check deeplab.data.annotations; do
    "$py" -m "$module" --help > help.txt 2>&1 || { cat help.txt >&2; fail "python -m $module --help failed"; }
    grep -q "== Configuration groups ==" help.txt || { cat help.txt >&2; fail "python -m $module --help: no page"; }
done
rm help.txt
[ -z "$(ls -A)" ] || fail "--help wrote into the current folder: $(ls -A)"

export DEEPLAB_PROGRESS=0
demo=(dataset.num_train=8 dataset.num_val=4)  # a small demo dataset, generated into ./datasets/demo
"$py" -m deeplab.train "${demo[@]}" trainer.iterations=4 trainer.val_every=4 trainer.checkpoint_every=4 \
    trainer.batch_size=4 trainer.precision=fp32 schedule.warmup_iters=0 hydra.run.dir=run \
    || fail "python -m deeplab.train failed"
[ -f run/last.pt ] && [ -f run/best.pt ] && [ -f run/train.log ] || fail "train: no last.pt, best.pt, train.log in run/"
"$py" -m deeplab.evaluate checkpoint=run/last.pt precision=fp32 num_workers=0 \
    || fail "python -m deeplab.evaluate failed"
metrics=(outputs/evaluate/*/metrics.json)
[ -f "${metrics[0]}" ] || fail "evaluate: no outputs/evaluate/<date_time>/metrics.json"
images=(datasets/demo/*/JPEGImages)
"$py" -m deeplab.predict checkpoint=run/last.pt "input=${images[0]}" output=predicted precision=fp32 \
    || fail "python -m deeplab.predict failed"
[ "$(ls predicted/*_color.png | wc -l)" -eq 12 ] || fail "predict: expected 12 colour masks in predicted/"
"$py" -m deeplab.data.check "${demo[@]}" workers=0 || fail "python -m deeplab.data.check failed"
echo "CI (installed): the wheel's commands ran from another folder: --help of each, train, evaluate, predict, check"
