"""Preference losses: TRL's DPOTrainer as the oracle, and the formulas' properties."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from adpo.objectives.adversarial import at_loss
from adpo.objectives.logps import sequence_logps
from adpo.objectives.preference import dpo_loss, preference_metrics


def test_dpo_loss_equals_trl_dpotrainer_on_the_same_model_and_batch(processor, tiny_model, world, tmp_path):
    """TRL's DPOTrainer.compute_loss and our loss from our log-probs, on TRL's own collated batch."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    policy = tiny_model.train()
    ref = copy.deepcopy(policy).eval()
    with torch.no_grad():  # make the reference differ, so the reference term is really tested
        for p in ref.parameters():
            p.add_(0.02 * torch.randn_like(p))
    rng = world.rng("oracle")
    rows = []
    for _ in range(4):
        s = world.harm_sample("train", rng, 0.0)
        from PIL import Image
        rows.append({"images": [Image.fromarray(world.render(s, rng))],
                     "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": s.prompt}]}],
                     "chosen": [{"role": "assistant", "content": [{"type": "text", "text": s.meta["refusal"]}]}],
                     "rejected": [{"role": "assistant", "content": [{"type": "text", "text": s.meta["compliance"]}]}]})
    args = DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=1, report_to="none",
                     save_strategy="no", use_cpu=True, bf16=False, gradient_checkpointing=False, max_length=None,
                     beta=0.1)
    trainer = DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=processor)
    batch = trainer.data_collator([dict(r) for r in copy.deepcopy(rows)])
    with torch.no_grad():
        trl_loss = float(trainer.compute_loss(trainer.model, batch))
        labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
        kw = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
              "pixel_values": batch["pixel_values"]}
        pol = sequence_logps(policy(**kw).logits, labels)
        ref_lp = sequence_logps(ref(**kw).logits, labels)
    n = pol.shape[0] // 2
    ours = float(dpo_loss(pol[:n], pol[n:], ref_lp[:n], ref_lp[n:], beta=0.1).losses.mean())
    assert abs(ours - trl_loss) < 1e-5, (ours, trl_loss)
    assert abs(trl_loss - math.log(2)) > 1e-3  # policy != reference, so this is not the trivial value


def test_loss_types_match_their_formulas_and_start_at_known_values():
    z = torch.zeros(3)
    assert torch.allclose(dpo_loss(z, z, z, z).losses, torch.full((3,), math.log(2)))
    assert torch.allclose(dpo_loss(z, z, z, z, beta=0.5, loss_type="ipo").losses, torch.full((3,), 1.0))
    assert torch.allclose(dpo_loss(z, z, z, z, loss_type="hinge").losses, torch.ones(3))
    h = torch.tensor([2.0])
    smooth = dpo_loss(h, z[:1], z[:1], z[:1], beta=0.1, label_smoothing=0.2).losses
    expect = -0.8 * torch.nn.functional.logsigmoid(0.1 * h) - 0.2 * torch.nn.functional.logsigmoid(-0.1 * h)
    assert torch.allclose(smooth, expect)
    with pytest.raises(ValueError, match="unknown loss_type"):
        dpo_loss(z, z, z, z, loss_type="kto")


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
def test_gradient_raises_chosen_and_lowers_rejected(loss_type):
    c = torch.tensor([-3.0], requires_grad=True)
    r = torch.tensor([-2.0], requires_grad=True)
    dpo_loss(c, r, torch.tensor([-3.0]), torch.tensor([-2.0]), loss_type=loss_type).losses.sum().backward()
    assert c.grad.item() < 0 < r.grad.item()  # descent raises log p(chosen), lowers log p(rejected)


def test_metrics_use_trl_names():
    c, r = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.0])
    out = dpo_loss(c, r, torch.zeros(2), torch.zeros(2), beta=1.0)
    m = preference_metrics(out, c, r)
    assert m["rewards/accuracies"] == 0.5 and m["rewards/margins"] == pytest.approx(0.5)
    assert set(m) == {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                      "logps/chosen", "logps/rejected"}


def test_at_loss_floor_is_opt_in():
    adv, util = torch.tensor(0.2, requires_grad=True), torch.tensor(1.0)
    assert float(at_loss(adv, util, alpha=30).detach()) == pytest.approx(30.2)
    floored = at_loss(adv, util, alpha=30, floor=0.5)
    assert float(floored.detach()) == pytest.approx(30.5 + 1e-4 * 0.2)
    floored.backward()
    assert adv.grad.item() == pytest.approx(1e-4)  # the official code's near-zero gradient below the floor
    assert float(at_loss(torch.tensor(0.7), None, floor=0.5)) == pytest.approx(0.7)
