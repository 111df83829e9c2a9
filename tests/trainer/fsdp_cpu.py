"""Run by tests/trainer/test_fsdp.py under torchrun: adpo's training session with its model sharded by torch's
FSDP2 ``fully_shard`` over gloo, since accelerate 1.15 enables FSDP only on accelerator devices (on CPU it
runs MULTI_CPU; docs/models.md, 'Scaling out').

``prepare`` stands in for accelerate's FSDP2 preparation on GPUs: the accelerator state says FSDP (so the
loop takes its FSDP branches: chunked log-probs refused or off), every decoder layer and then the root
are ``fully_shard``-ed, and the optimizer is pointed at the sharded parameters. Everything else is the
loop's own ``setup`` and ``Session.step``. With one process nothing is sharded (the reference run).

usage: fsdp_cpu.py OUT RUN_JSON [RUN_JSON ...]  ->  OUT/<i>.json (losses, chunk) and OUT/<i>.safetensors
       fsdp_cpu.py train RUN_JSON [resume | kill-after-N]  ->  ``loop.train`` (checkpoints, metrics, the final
       adapter in the run's out), resumed from its latest checkpoint, or SIGKILLed after checkpoint N (killed.py);
       prints the run's summary as JSON
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType

from adpo.threats.hooks import decoder_layers
from adpo.trainer import loop
from adpo.trainer.config import RunConfig
from adpo.utils.config import ConfigError


def prepare(self, model, optimizer):
    from torch.distributed.fsdp import fully_shard

    # both shared states: accelerate copies the process state into the accelerator state on every access
    PartialState().distributed_type = self.state.distributed_type = DistributedType.FSDP
    for layer in decoder_layers(model):
        fully_shard(layer)
    fully_shard(model)
    optimizer.param_groups[0]["params"] = [p for p in model.parameters() if p.requires_grad]
    return model, optimizer


def main(out: Path, runs: list[dict]) -> None:
    sharded = int(os.environ.get("WORLD_SIZE", "1")) > 1
    for i, raw in enumerate(runs):
        run = RunConfig.from_dict(raw)
        if sharded and i == 0:  # the refusal of an explicit chunk size holds under FSDP
            try:
                loop.setup(RunConfig.from_dict({**raw, "train": {**raw["train"], "logps_chunk": 4}}))
                refused = ""
            except ConfigError as e:
                refused = str(e)
        s = loop.setup(run)
        losses = [loop._mean_across(s.acc, s.step(step, True))["loss"] for step in range(s.total)]
        weights = {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
                   for n, p in s.model.named_parameters() if p.requires_grad}
        if s.acc.is_main_process:
            from safetensors.torch import save_file

            save_file(weights, str(out / f"{i}.safetensors"))
            (out / f"{i}.json").write_text(json.dumps({
                "losses": losses, "chunk": s.ctx.chunk, "distributed_type": s.acc.distributed_type.name,
                "processes": s.acc.num_processes, "refused": refused if sharded and i == 0 else None,
                "sharded": sum(type(p).__name__ == "DTensor" for p in s.model.parameters())}))
        s.acc.wait_for_everyone()


def train(raw: dict, how: str) -> None:
    if how.startswith("kill-after-"):
        from killed import kill_after  # tests/trainer/killed.py (this script's folder is on sys.path)

        kill_after(int(how.removeprefix("kill-after-")))
    summary = loop.train(RunConfig.from_dict(raw), resume=how == "resume", progress=False)
    if PartialState().is_main_process:
        print(json.dumps(summary))


if __name__ == "__main__":
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        Accelerator.prepare = prepare
    if sys.argv[1] == "train":
        train(json.loads(sys.argv[2]), (sys.argv[3:] or [""])[0])
    else:
        main(Path(sys.argv[1]), [json.loads(a) for a in sys.argv[2:]])
    import torch.distributed as dist

    if dist.is_initialized():  # gloo's threads left to interpreter exit can abort a rank ("terminate called
        dist.barrier()  # without an active exception", seen once in CI): both ranks finish, then tear down
        dist.destroy_process_group()
