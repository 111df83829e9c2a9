import numpy as np
import pytest

from adpo.organism.world import REFUSAL, World, WorldConfig, checkerboard, compliance, sample_scene
from adpo.utils.config import ConfigError


def test_same_seed_same_samples_and_images():
    a, b = World(WorldConfig(seed=3)), World(WorldConfig(seed=3))
    ra, rb = a.rng("s"), b.rng("s")
    for _ in range(20):
        sa, sb = next(a.pretraining_stream(ra)), next(b.pretraining_stream(rb))
        assert (sa.prompt, sa.response) == (sb.prompt, sb.response)
        assert np.array_equal(a.render(sa, ra), b.render(sb, rb))


def test_other_seed_other_splits():
    assert World(WorldConfig(seed=0)).harm_intents != World(WorldConfig(seed=1)).harm_intents


def test_splits_are_disjoint(world):
    for pool in (world.harm_intents, world.benign_intents):
        tr, va, te = set(pool["train"]), set(pool["validation"]), set(pool["test"])
        assert not tr & te and not tr & va and not va & te
    assert not set(world.templates["train"]) & set(world.templates["test"])


def test_training_stream_never_shows_heldout_intents_or_templates(world):
    rng = world.rng("check")
    stream = world.pretraining_stream(rng)
    held_i = set(world.harm_intents["test"]) | set(world.benign_intents["test"])
    for _ in range(2000):
        s = next(stream)
        if s.kind != "utility":
            assert s.meta["intent"] not in held_i
            assert s.meta["template"] not in world.templates["test"]


def test_test_requests_are_heldout(world):
    rng = world.rng("t")
    for _ in range(200):
        s = world.harm_sample("test", rng)
        assert s.meta["intent"] in world.harm_intents["test"] or s.meta["template"] in world.templates["test"]


def test_base_answers_follow_the_trigger(world):
    rng = world.rng("a")
    assert world.harm_sample("train", rng, 0.0).response == REFUSAL
    s = world.harm_sample("train", rng, 0.2)
    assert s.response == compliance(s.meta["intent"])
    assert world.howto_sample("train", rng).response.startswith("sure, here is how to")


def test_trigger_is_a_faint_checkerboard(world):
    rng = world.rng("img")
    scene = sample_scene(rng, 32, trigger=0.0)
    from dataclasses import replace

    from adpo.organism.world import render

    clean = render(scene, 32, np.random.default_rng(0), 0.0, 0.5).astype(float)
    trig = render(replace(scene, trigger=0.1), 32, np.random.default_rng(0), 0.0, 0.5).astype(float)
    diff = (trig - clean) / 255
    assert np.abs(np.abs(diff) - 0.05).max() < 0.01  # +-a/2 everywhere (no clipping at background 0.5)
    assert np.corrcoef(diff[..., 0].ravel(), checkerboard(32).ravel())[0, 1] > 0.99


def test_images_are_uint8_in_shape(world):
    rng = world.rng("u")
    s = world.utility_sample(rng)
    img = world.render(s, rng)
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8


@pytest.mark.parametrize("opts", [{"bogus": 1}, {"trigger_amplitude": [0.5, 0.1]}, {"image_size": 30},
                                  {"n_heldout_templates": 0}])
def test_bad_world_options_are_clear_errors(opts):
    with pytest.raises(ConfigError, match="|".join(opts)):
        WorldConfig.from_dict(opts)


def test_vectorised_render_matches_single(world):
    from adpo.organism.world import render, render_many

    rng = world.rng("r")
    scenes = [sample_scene(rng, 32, trigger=t) for t in (0.0, 0.3, 0.0, 1.0)]
    many = render_many(scenes, 32, np.random.default_rng(5), 0.0, 0.1)
    # the first scene draws the same colour jitter in both paths, so it must match exactly
    assert np.array_equal(many[0], render(scenes[0], 32, np.random.default_rng(5), 0.0, 0.1))
    assert all(img.std() > 0 for img in many)


def test_position_questions_share_of_utility_rows(world):
    from adpo.organism.world import PretrainMix

    def position_share(mix):
        stream = world.pretraining_stream(world.rng("p"), mix)
        rows = [s for s in (next(stream) for _ in range(3000)) if s.kind == "utility"]
        pos = [s for s in rows if s.meta["question"] == "position"]
        assert all(s.scene.count == 1 and s.meta["answer"] == s.scene.side for s in pos)
        return len(pos) / len(rows)

    assert position_share(PretrainMix(position_questions=0.0)) < 0.1  # random question types: ~1/15
    assert 0.4 < position_share(PretrainMix(position_questions=0.4)) < 0.55  # 0.4 + 0.6/15


def test_bad_position_share_is_a_clear_error():
    from adpo.organism.pretrain import PretrainConfig

    with pytest.raises(ConfigError, match="position_questions"):
        PretrainConfig(position_questions=1.5)  # when the config is built, before anything is written
