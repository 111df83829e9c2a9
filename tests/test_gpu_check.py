"""scripts/gpu_check.sh runs end to end on a CPU (``--device cpu --tiny``), so it is ready when a GPU is lent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_script_runs_on_cpu_tiny(tmp_path):
    out = tmp_path / "rows.jsonl"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--device", "cpu", "--tiny", "--reps", "1",
                           "--pgd-steps", "3", "--out", str(out)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["phase"] for r in rows] == ["dpo", "adpo K=1", "adpo K=5", "pgd3"]
    assert all(r["s_per_step"] > 0 and r["shape"] == "tiny" for r in rows)
    assert [r["ratio_to_dpo"] is not None for r in rows] == [False, True, True, False]
    assert [r["attack_steps"] for r in rows] == [0, 1, 5, 3]
    assert "s/step" in proc.stdout and "x DPO" in proc.stdout


def test_gpu_check_script_parses_and_guards_the_ddp_row_by_gpu_count():
    """The 2-GPU DDP row cannot run here (no GPU): the script must at least parse, and run it only when
    torch sees more than one GPU (its --ddp mode is the benchmark's DDP path, run on CPU under gloo by hand)."""
    script = (ROOT / "scripts" / "gpu_check.sh").read_text()
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts" / "gpu_check.sh")]).returncode == 0
    assert 'if [ "$GPUS" -gt 1 ]' in script and "--nproc_per_node 2 benchmarks/gpu_check.py --ddp" in script
