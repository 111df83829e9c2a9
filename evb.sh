export PYTHONPATH=/work/wt19/src HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 ACCELERATE_USE_CPU=1
M=/work/runs/v1/organism/model
A=(eval --model $M --no-progress "tasks=[clean,pgd-image]" limit=4 batch_size=2 pgd_image.steps=4 "pgd_image.eps=[16/255]" pgd_image.blank=false check_every=2)
rm -rf b1 b2
nice -n 10 /work/main/.venv/bin/python -m adpo.cli "${A[@]}" --out b1 > b1.log 2>&1
nice -n 10 /work/main/.venv/bin/python -m torch.distributed.run --nproc_per_node 2 --master_port 29591 -m adpo.cli "${A[@]}" --out b2 > b2.log 2>&1
