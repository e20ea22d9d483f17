#!/usr/bin/env bash
# The GPU measurements of README "Speed and scale", on one CUDA machine, in four parts that each fit
# a 10-minute slot (the time limits of a part's commands add up to at most 9 minutes, tested):
#   tools/bench_gpu.sh steps OUT_DIR   # the paper's config (VGG-19 448/224/224, 200 classes), random tensors:
#                                      # bf16 batch sweep, the largest batch that fits, the data loader
#   tools/bench_gpu.sh options OUT_DIR # fp32 and NCHW against bf16 channels_last, cuDNN autotuning off,
#                                      # DDP over one GPU, RA-CNN's overhead ratios
#   tools/bench_gpu.sh train OUT_DIR   # torch.compile gain, and the whole schedule on a CUB-shaped stand-in
#                                      # (real JPEG loading; train.log gives images/s per epoch)
#   tools/bench_gpu.sh crop OUT_DIR    # model.crop.compile: the compiled crop's step times, its share and
#                                      # the overhead ratios with it
# DDP's own cost is the --ddp rows of "options" (torchrun with one process runs no DDP at all).
# Every command's table goes to OUT_DIR/<name>.log and its rows to OUT_DIR/<name>.json.
set -u
part=${1:?steps, options, train or crop}
out=${2:?output folder}
mkdir -p "$out"
export PYTHONPATH=${PYTHONPATH:-}:$PWD PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
bench() {  # bench NAME SECONDS ARGS...: one steps benchmark, stopped after SECONDS
    local name=$1 limit=$2
    shift 2
    echo "== $name: tools/benchmark.py steps $*"
    timeout "$limit" "$py" tools/benchmark.py steps --json "$out/$name.json" "$@" 2>&1 | tee "$out/$name.log"
}
case $part in
steps)
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
    "$py" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
    "$py" -m pytest -q -p no:cacheprovider tests/test_crop.py 2>&1 | tail -3
    bench sweep 240 --batch 16 32 64 96 128 --cases alternate_cls alternate_apn fusion eval --steps 10 --warmup 3 \
        --loader-workers 8 16 --loader-images 1024
    bench largest 120 --batch 192 256 288 320 --cases alternate_cls --steps 5 --warmup 2 --loader-workers
    ;;
options)
    bench fp32_nchw 150 --batch 32 --amp none bf16 --channels-last false true --cases alternate_cls eval --steps 10 \
        --warmup 3 --loader-workers
    bench no_autotune 60 --opts train.cudnn_benchmark=false --batch 64 --cases alternate_cls eval --steps 10 \
        --warmup 3 --loader-workers
    bench ddp 120 --batch 64 --ddp false true --cases alternate_cls alternate_apn --steps 20 --warmup 5 \
        --loader-workers
    bench overhead 120 --batch 64 --cases plain_cls plain_apn --steps 20 --warmup 5 --overhead --loader-workers
    ;;
train)
    bench compile 300 --batch 64 --compile false true --cases alternate_cls alternate_apn eval --steps 10 --warmup 3 \
        --loader-workers
    work=$(mktemp -d)  # stand-in images and checkpoints (too large to keep with the results)
    "$py" -c "from raccnn.data.standin import write_cub_standin; write_cub_standin('$work/standin', images_per_class=10)"
    run_opts=(data.root=$work/standin model.pretrained=false train.pretrain_cls.epochs=1 train.init_apn.epochs=1
              train.alternate.rounds=1 train.alternate.cls.min_epochs=1 train.alternate.cls.max_epochs=1
              train.alternate.apn.min_epochs=1 train.alternate.apn.max_epochs=1 train.fusion.epochs=1)
    echo "== tools/train.py --config experiments/configs/cub200_vgg19.yaml --opts ${run_opts[*]}"
    SECONDS=0
    timeout 240 "$py" tools/train.py --config experiments/configs/cub200_vgg19.yaml --work-dir "$work/run" \
        --opts "${run_opts[@]}" > "$out/train.log" 2>&1
    echo "exit $? after $SECONDS s"
    if [ -f "$work/run/train.log" ]; then
        grep -E "phase|img/s" "$work/run/train.log" | tail -25
        cp "$work/run/train.log" "$out/trainlog.txt"
    fi
    rm -rf "$work"
    ;;
crop)
    bench crop_compile 300 --batch 64 --opts model.crop.compile=true --cases alternate_cls alternate_apn eval \
        --steps 10 --warmup 3 --loader-workers
    bench crop_compile_overhead 240 --batch 64 --opts model.crop.compile=true --cases plain_cls plain_apn \
        --steps 20 --warmup 5 --overhead --loader-workers
    ;;
*)
    echo "unknown part $part: steps, options, train or crop" >&2
    exit 2
    ;;
esac
