"""Sharded `adpo eval` (2 CPU processes through torchrun, gloo): the same records and results.json as one
process, and a killed sharded run resumes per behaviour (its part files merged, nothing redone)."""

from __future__ import annotations

import json
import shutil

import pytest

from adpo.eval.shard import Shard, batches

# random starts (image and latent), a universal image (every process optimises the same one), 2 batches a process
OPTS = ["tasks=[clean,pgd-image,latent,universal-image]", "judges=[organism,gcg13]", "limit=4", "batch_size=1",
        "max_new_tokens=4", "check_every=1", "pgd_image.eps=[8/255]", "pgd_image.steps=2",
        "pgd_image.random_start=true", "pgd_image.blank=false", "latent.eps=[0.5]", "latent.steps=2",
        "universal_image.steps=2", "universal_image.train_n=4", "universal_image.blank=false"]
VOLATILE = ("date", "date_id", "total_evaluation_time_seconds", "evaluation_date")


def evaluate(launch, tiny_dir, export_dir, out, procs):
    return launch(["eval", "--model", tiny_dir, "--out", out, "--no-progress", *OPTS,
                   f"data.harmful={export_dir / 'harmful_test.jsonl'}",
                   f"data.universal_train={export_dir / 'preference_train.jsonl'}"], procs)


def stable(path):
    return {k: v for k, v in json.loads(path.read_text()).items() if k not in VOLATILE}


@pytest.mark.slow
def test_two_processes_write_what_one_writes_and_resume_per_behaviour(launch, tiny_dir, export_dir, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    evaluate(launch, tiny_dir, export_dir, one, 1)
    evaluate(launch, tiny_dir, export_dir, two, 2)
    files = sorted(p.name for p in one.glob("samples_*.jsonl"))
    assert len(files) == 4 and files == sorted(p.name for p in two.glob("samples_*.jsonl"))
    for name in files:  # byte for byte: same batches, same seeds, merged in row order
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    assert stable(one / "results.json") == stable(two / "results.json")
    assert not list(two.glob("*.rank*"))

    # what a kill -9 of a sharded run leaves: records of both processes, process 1's not yet merged and its
    # last line cut short; one finished record is marked to prove it is kept, not redone
    killed = tmp_path / "killed"
    shutil.copytree(one, killed)
    (killed / "results.json").unlink()
    lines = (one / "samples_pgd-image.jsonl").read_text().splitlines()
    kept = json.loads(lines[0])
    kept["response"] = "kept, not redone"
    (killed / "samples_pgd-image.jsonl").write_text(json.dumps(kept, sort_keys=True) + "\n")
    (killed / "samples_pgd-image.jsonl.rank1").write_text(lines[1] + "\n" + lines[2][:40])
    evaluate(launch, tiny_dir, export_dir, killed, 2)
    assert not list(killed.glob("*.rank*"))
    done = [json.loads(x) for x in (killed / "samples_pgd-image.jsonl").read_text().splitlines()]
    assert len(done) == len(lines)  # nothing twice: only the cut record and the missing one were run
    assert done[0]["response"] == "kept, not redone"
    assert [json.dumps(r, sort_keys=True) for r in done[1:]] == [json.dumps(json.loads(x), sort_keys=True)
                                                                   for x in lines[1:]]


def test_batches_are_cut_as_in_one_process_and_dealt_round_robin():
    rows = list(range(7))
    todo = batches(rows, 2, [r in (2, 3, 4) for r in rows])
    assert todo == [[0, 1], [5], [6]]  # the [2, 3] batch is done, [4, 5] keeps its place
    assert Shard(0, 2).mine(todo) == [[0, 1], [6]] and Shard(1, 2).mine(todo) == [[5]]
