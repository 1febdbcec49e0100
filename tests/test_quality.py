"""The pieces the generator's conditioning rests on: parts-mode conditions, hard negatives,
augmentation, one rendering path, raw clips out, and per-cell evaluation kinds."""

import math

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import t2v
from pipeline import dist
from pipeline.augment import augment, parse
from pipeline.evaluate import _kind
from pipeline.config import to_dict
from pipeline.models import SCRAMBLES, CBN3d, Generator, ImageD, VideoD, build_generator, scramble_colours
from pipeline.train import GAN, TrainConfig, d_loss, ema_beta, fake_conditions, match_loss, mismatched
from pipeline.vocab import Vocab, match_template

TEMPLATES = ["Pushing [something] from left to right", "Pushing [something] from right to left",
             "Moving [something] up", "Moving [something] down"]


@pytest.fixture(scope="module")
def parts_vocab(toy, tmp_path_factory):
    d = tmp_path_factory.mktemp("parts") / "vocab"
    t2v("vocab", "--labels", toy / "labels/train.json", toy / "labels/validation.json", "--out", d,
        "--mode", "parts", "--epoch", "5")
    return Vocab(d)


def test_a_prompt_is_matched_to_its_template_and_placeholder():
    assert match_template("pushing red square from left to right".split(), TEMPLATES) == (
        TEMPLATES[0], [["red", "square"]])
    assert match_template("moving the big blue cup up".split(), TEMPLATES) == (TEMPLATES[2], [["the", "big", "blue", "cup"]])
    assert match_template("a cat sleeping".split(), TEMPLATES) is None
    assert match_template("moving up".split(), TEMPLATES) is None  # an empty slot does not fit


def test_parts_conditions_keep_motion_and_object_apart(parts_vocab):
    v = parts_vocab
    t_dim, head_dim, mod_dim = v.parts  # template | object head word | its modifiers
    assert t_dim + head_dim + mod_dim == v.cond_dim
    ltr = v.condition("pushing red square from left to right")
    rtl = v.condition("Pushing red square from right to left")
    blue = v.condition("pushing blue plank from left to right")
    assert np.allclose(ltr[t_dim:], rtl[t_dim:]) and not np.allclose(ltr[:t_dim], rtl[:t_dim])
    assert np.allclose(ltr[:t_dim], blue[:t_dim]) and not np.allclose(ltr[t_dim:], blue[t_dim:])
    # Each object block is a function of its own word: a red square and a red plank share the colour block.
    plank = v.condition("pushing red plank from left to right")
    assert np.allclose(ltr[t_dim + head_dim:], plank[t_dim + head_dim:])
    assert not np.allclose(ltr[t_dim:t_dim + head_dim], plank[t_dim:t_dim + head_dim])
    # A new composition is built from its words, and a word in no caption still gets a vector.
    new = v.condition("moving purple pillar down")
    assert np.isfinite(new).all() and np.abs(new).max() < 100
    # A training caption conditions exactly as vocab stored it for that sample.
    with h5py.File(v.root / "samples.h5") as f:
        label, cond = f["label"][0].decode(), f["condition"][0]
    assert np.allclose(v.condition(label), cond, atol=1e-5)


def test_hard_negatives_swap_exactly_one_part():
    torch.manual_seed(0)
    t = torch.eye(4)[torch.randint(4, (16,))]
    o = torch.eye(6)[torch.randint(6, (16,))]
    cond = torch.cat([t, o], 1)
    vid, img = mismatched(cond, "hard", (4, 6))
    t_same = (vid[:, :4] == t).all(1)
    o_same = (vid[:, 4:] == o).all(1)
    assert (t_same ^ o_same).all()  # every row: one part kept, the other swapped
    assert (~(img[:, 4:] == o).all(1)).all() and (img[:, :4] == t).all()  # the image D: another object
    # Three blocks (template, shape, colour): each row swaps exactly one; the image D never the template.
    c = torch.eye(3)[torch.randint(3, (12,))]
    cond3 = torch.cat([t[:12], o[:12], c], 1)
    vid3, img3 = mismatched(cond3, "hard", (4, 6, 3))
    kept = torch.stack([(vid3[:, :4] == t[:12]).all(1), (vid3[:, 4:10] == o[:12]).all(1),
                        (vid3[:, 10:] == c).all(1)], 1)
    assert (kept.sum(1) == 2).all() and (img3[:, :4] == t[:12]).all()
    roll_vid, _ = mismatched(cond, "roll", (4, 6))
    assert torch.equal(roll_vid, cond.roll(1, 0))


def test_a_motion_only_video_d_judges_the_template_words_alone():
    torch.manual_seed(0)
    parts = (4, 3, 3)
    t, o, c = torch.eye(4)[torch.arange(8) % 4], torch.eye(3)[torch.arange(8) % 3], torch.eye(3)[torch.arange(8) % 2]
    cond = torch.cat([t, o, c], 1)
    D = VideoD(sum(parts), ch=2, size=16, parts=parts).eval()
    phi = D.features(torch.rand(8, 3, 4, 16, 16) * 2 - 1)
    other_object = torch.cat([t, o.roll(1, 0), c.roll(3, 0)], 1)
    assert torch.equal(D.score(phi, cond), D.score(phi, other_object))  # object words change nothing
    assert not torch.allclose(D.score(phi, cond), D.score(phi, torch.cat([t.roll(1, 0), o, c], 1)))
    vid, img = mismatched(cond, "hard", parts, vid_template_only=True)
    assert (~(vid[:, :4] == t).all(1)).all() and torch.equal(vid[:, 4:], cond[:, 4:])  # always the template
    assert (img[:, :4] == t).all()  # the image D's negatives are as before: an object block


PARTS = (4, 3, 3)  # the tiny GAN's caption blocks: template | head word | modifier


def tiny_gan(tmp_path, **cfg) -> tuple[GAN, torch.Tensor]:
    """A GAN small enough for one step in a test, with hard negatives, and 8 captions for it."""
    torch.manual_seed(0)
    cfg = TrainConfig(tmp_path, tmp_path, tmp_path, batch=8, g_ch=2, d_ch=2, z_dim=4, gru_dim=8, frames=4,
                      size=16, img_frames=1, d_steps=1, mismatch="hard", g_conv="2+1d", **cfg)
    return (GAN(cfg, sum(PARTS), torch.device("cpu"), cond_parts=PARTS),
            one_hot_captions([(i % 4, i % 3, i % 3) for i in range(8)], PARTS))


@pytest.mark.parametrize("lever", [{"d_vid_cond": "motion"}, {"vid_mismatch": "template"}])
def test_the_video_ds_negatives_swap_only_the_template_with_either_lever(lever, tmp_path):
    gan, cond = tiny_gan(tmp_path, fake_cond="recompose_g", **lever)
    assert gan.D_vid.head.embed.in_features == (4 if "d_vid_cond" in lever else 10)  # template words / all
    scored, d_score = [], gan.D_vid.score
    gan.D_vid.score = lambda phi, c: scored.append(c) or d_score(phi, c)
    out = gan.step(lambda: (torch.rand(8, 3, 4, 16, 16) * 2 - 1, cond))
    assert np.isfinite([out["loss_D"], out["loss_G"]]).all()
    mism = scored[1]  # D's scores: real, mismatched real, fake
    assert torch.equal(mism[:, 4:], cond[:, 4:]) and (~(mism[:, :4] == cond[:, :4]).all(1)).all()


@pytest.mark.parametrize("native", [True, False])
def test_amp_draws_in_bf16_only_where_the_hardware_has_it(native, tmp_path, monkeypatch):
    """On a CPU without bf16 in hardware, autocast would emulate it, slower than fp32."""
    monkeypatch.setattr(dist, "native_bf16", lambda device: native)
    gan, cond = tiny_gan(tmp_path, amp=True)
    assert gan.bf16 is native
    drawn, g_forward = [], gan.G_train
    gan.G_train = lambda c, z: drawn.append(g_forward(c, z)) or drawn[-1]
    out = gan.step(lambda: (torch.rand(8, 3, 4, 16, 16) * 2 - 1, cond))
    assert np.isfinite([out["loss_D"], out["loss_G"]]).all()
    assert {x.dtype for x in drawn} == {torch.bfloat16 if native else torch.float32}
    assert all(p.dtype == torch.float32 for p in gan.G.parameters())  # weights and Adam stay fp32


def one_hot_captions(rows, sizes) -> torch.Tensor:
    """Conditions whose blocks (template, head word, modifier) are one-hot: row (a, b, c) is
    template a, head word b, modifier c."""
    return torch.stack([torch.cat([torch.eye(n)[i] for n, i in zip(sizes, row)]) for row in rows])


def test_an_object_part_is_swapped_for_a_neighbours_where_the_batch_has_one():
    # Blocks: template (2) | head word (3: seven, zero, plank) | modifier (2: digit, red).
    head, mod = torch.eye(3), torch.eye(2)
    cond = one_hot_captions([(0, 0, 0), (1, 1, 0), (0, 2, 1), (1, 2, 1)], (2, 3, 2))  # digit seven, digit zero, red plank x2
    for seed in range(20):
        torch.manual_seed(seed)
        _, img = mismatched(cond, "hard", (2, 3, 2))  # the image D: row 0 swaps its head, row 1 its modifier
        assert torch.equal(img[0, 2:5], head[1])  # "digit seven" -> "digit zero", never "digit plank"
        assert torch.equal(img[1, 5:], mod[1])  # "digit zero" has no colour neighbour: any other modifier


def test_shuffled_fake_conditions_recombine_templates_and_objects():
    torch.manual_seed(0)
    t = torch.eye(4)[torch.arange(32) % 4]
    o = torch.eye(6)[torch.randint(6, (32,))]
    cond = torch.cat([t, o], 1)
    g = fake_conditions(cond, "shuffle", (4, 6))
    assert torch.equal(g[:, 4:], o)  # each row keeps its object words
    assert sorted(g[:, :4].argmax(1).tolist()) == sorted(t.argmax(1).tolist())  # the batch's templates, permuted
    assert not torch.equal(g[:, :4], t)  # ... so pairs the batch never showed appear
    assert torch.equal(fake_conditions(cond, "data", (4, 6)), cond)
    assert torch.equal(fake_conditions(cond, "shuffle", None), cond)  # no parts: nothing to recombine


@pytest.mark.parametrize("kind", ["shuffle", "shuffle_g", "recompose_g"])
def test_with_shuffle_g_only_gs_own_step_draws_the_shuffled_captions(kind, tmp_path):
    """D must never see a caption on fakes alone (it would learn that pair is fake); G still
    gets asked for the pairs no clip shows."""
    gan, cond = tiny_gan(tmp_path, fake_cond=kind)
    drawn, d_fake = [], []
    g_forward, d_score = gan.G_train, gan.D_vid.score
    gan.G_train = lambda c, z: drawn.append((c, torch.is_grad_enabled())) or g_forward(c, z)
    gan.D_vid.score = lambda phi, c: d_fake.append(c) or d_score(phi, c)
    gan.step(lambda: (torch.rand(8, 3, 4, 16, 16) * 2 - 1, cond))
    shuffled = [c for c, _ in drawn if not torch.equal(c, cond)]
    assert len(shuffled) == 1 and drawn[-1][1]  # G's gradient step draws shuffled captions
    assert torch.equal(shuffled[0][:, 4:], cond[:, 4:])
    # D's three scores in its step: real, mismatched real, fake; then G's.
    assert torch.equal(d_fake[2], shuffled[0] if kind == "shuffle" else cond)
    assert len(drawn) == (1 if kind == "shuffle" else 2)


@pytest.mark.parametrize("kind", ["hinge", "bce"])
def test_with_d_neg_weight_one_half_a_d_that_cannot_tell_is_not_pulled_to_call_everything_fake(kind):
    """D's negatives (real with a wrong caption, fake) are two terms against one positive. At
    weight 1 a D that gives every clip the same logit is pulled down (every clip "fake"); at
    GAN-CLS's 0.5 it sits where it is (hinge) or at the even odds (bce)."""
    grads = {}
    for w in (1.0, 0.5):
        c = torch.zeros((), requires_grad=True)  # one logit for every clip
        same = c.expand(8)
        d_loss(same, same, same, kind, w).backward()
        grads[w] = c.grad.item()
    assert grads[1.0] > 0.4  # descent lowers every logit
    assert grads[0.5] == pytest.approx(0.0, abs=1e-6)


def test_the_match_loss_ranks_each_clips_caption_among_the_readings_d_can_tell_apart(tmp_path):
    """A softmax over D's projection scores of every distinct caption D can read (the image D
    reads the object words only): chance is log(readings), and a caption that reads the same
    as the clip's own (another template, for the image D) counts as the clip's own."""
    gan, cond = tiny_gan(tmp_path, match_weight=1.0)
    D = gan.D_img
    blank = torch.zeros(8 * D.k, D.width)  # features that favour no caption: every score the same
    assert match_loss(D, blank, cond, cond).item() == pytest.approx(math.log(3))  # 3 objects in the batch
    phi = D.features(torch.rand(8, 3, 4, 16, 16) * 2 - 1)
    other_template = torch.cat([cond[:, :PARTS[0]].roll(1, 0), cond[:, PARTS[0]:]], 1)
    assert match_loss(D, phi, cond, torch.cat([cond, other_template])).item() == pytest.approx(
        match_loss(D, phi, cond, cond).item())
    # The video D reads the template too: the same swap is a wrong caption there.
    vphi = gan.D_vid.features(torch.rand(8, 3, 4, 16, 16) * 2 - 1)
    assert match_loss(gan.D_vid, vphi * 0, cond, torch.cat([cond, other_template])).item() > math.log(3)
    # G's step ranks its own captions too: a lower loss moves G towards its captions.
    out = gan.step(lambda: (torch.rand(8, 3, 4, 16, 16) * 2 - 1, cond))
    assert math.isfinite(out["loss_G"]) and math.isfinite(out["loss_D"])


def test_the_ema_half_life_grows_with_the_run_up_to_ema_beta():
    assert ema_beta(0.99, 0.0, 5) == 0.99  # no rampup: the fixed decay of the original
    betas = [ema_beta(0.999, 0.05, s) for s in (1, 100, 1000, 4000, 100_000)]
    assert betas == sorted(betas) and betas[0] < 1e-6 and betas[-1] == 0.999
    assert ema_beta(0.999, 0.05, 1000) == pytest.approx(0.5 ** (1 / 50))  # half-life: 5% of 1000 steps


def test_augmentation_is_one_draw_per_clip_and_never_a_flip():
    torch.manual_seed(0)
    frame = torch.rand(4, 3, 1, 32, 32)
    clip = frame.expand(4, 3, 16, 32, 32).contiguous()  # a still clip
    out = augment(clip, parse("color,translation,cutout"))
    assert out.shape == clip.shape
    assert torch.allclose(out, out[:, :, :1].expand_as(out))  # every frame got the same draw
    with pytest.raises(ValueError):
        parse("color,flip")


def test_heldout_kinds_follow_from_the_training_words():
    train_objects = {"red square", "blue plank"}
    words = {"red", "square", "blue", "plank", "digit", "one"}
    assert _kind("red square", ["red square"], train_objects, words) == "new_pair"
    assert _kind("blue square", ["blue square"], train_objects, words) == "new_object"
    assert _kind("digit four", ["digit four"], train_objects, words) == "unreachable"


def test_recompose_g_swaps_a_colour_only_where_the_batch_shows_it_with_a_shared_shape():
    # Blocks: template (2) | head (3: square, plank, four) | modifier (3: red, blue, digit).
    mod = torch.eye(3)
    cond = one_hot_captions([(0, 0, 0), (1, 0, 1), (0, 1, 1), (1, 2, 2)], (2, 3, 3))  # red/blue square, blue plank, digit four
    for seed in range(10):
        torch.manual_seed(seed)
        out = fake_conditions(cond, "recompose_g", (2, 3, 3))
        assert torch.equal(out[:, 2:5], cond[:, 2:5])  # every head word kept
        assert torch.equal(out[2, 5:], mod[0])  # blue plank -> red plank (red ~ blue via square)
        assert torch.equal(out[0, 5:], mod[1]) and torch.equal(out[1, 5:], mod[0])
        assert torch.equal(out[3, 5:], mod[2])  # digit four keeps "digit"


def test_a_coarse_view_video_d_cannot_tell_two_glyphs_with_the_same_block_averages():
    """d_vid_view=4: the video D sees 4x4-pixel averages, so two clips that differ only inside
    those blocks (a glyph's strokes) get the same score, and a clip moved by a block does not."""
    torch.manual_seed(0)
    D = VideoD(6, ch=2, size=16, view=4).eval()
    base = torch.rand(2, 3, 4, 16, 16) * 2 - 1
    detail = torch.randn(2, 3, 4, 16, 16)
    detail -= F.interpolate(F.avg_pool3d(detail, (1, 4, 4)), scale_factor=(1, 4, 4))  # zero mean in every block
    cond = torch.randn(2, 6)
    assert torch.allclose(D(base, cond), D(base + detail, cond), atol=1e-5)
    assert not torch.allclose(D(base, cond), D(base.roll(4, -1), cond), atol=1e-3)
    with pytest.raises(ValueError, match="view must divide"):
        VideoD(6, ch=2, size=16, view=3)


def test_a_pooled_video_d_runs_on_the_averaged_clip_with_the_body_of_that_size():
    """d_vid_pool=2 (DVD-GAN's temporal D): the body is built for and fed the 2x2-averaged clip,
    so it scores a clip as the same-sized body scores its averages, at a quarter of the positions."""
    torch.manual_seed(0)
    pooled = VideoD(6, ch=2, size=32, pool=2).eval()
    small = VideoD(6, ch=2, size=16).eval()
    small.load_state_dict(pooled.state_dict())  # the same body: one weight set fits both
    clip, cond = torch.rand(2, 3, 4, 32, 32) * 2 - 1, torch.randn(2, 6)
    score = pooled(clip, cond)
    assert torch.allclose(score, small(F.avg_pool3d(clip, (1, 2, 2)), cond), atol=1e-6)
    pooled.view, small.view = 4, 2  # a view counts full-size pixels: 4 of them are 2 pooled ones
    assert torch.allclose(pooled(clip, cond), small(F.avg_pool3d(clip, (1, 2, 2)), cond), atol=1e-6)
    assert not torch.allclose(pooled(clip, cond), score, atol=1e-4)
    for bad in (dict(pool=0), dict(pool=3), dict(pool=4)):  # 4 would leave 8 pixels
        with pytest.raises(ValueError):
            VideoD(6, ch=2, size=32, **bad)


def test_a_factored_image_d_judges_the_colour_word_on_colours_and_the_shape_word_without_them(tmp_path):
    """d_img_views=factor: the modifier (colour) projection reads a bag of pixel colours, so a
    frame's pixels moved anywhere score the same there; the head word (shape) projection reads
    colour-scrambled frames, so over the scrambles an object's colour is invisible to it."""
    torch.manual_seed(0)
    D = ImageD(sum(PARTS), ch=2, size=16, k=1, parts=PARTS, views="factor").eval()
    frame = torch.full((1, 3, 1, 16, 16), 0.1)
    frame[..., 4:12, 2:14] = torch.tensor([-0.7, -0.5, 0.8])[:, None, None, None]  # a blue plank
    shuffled = frame.flatten(3)[..., torch.randperm(256)].view_as(frame)  # the same pixels, no shape
    cond = one_hot_captions([(0, 1, 2)], PARTS)
    mods_only = lambda phi, c: D.head_mod(phi[:, D.width:], c[:, 7:])  # noqa: E731  the colour term
    assert torch.allclose(mods_only(D.features(frame), cond), mods_only(D.features(shuffled), cond))
    # Averaged over every scramble, the shape view of a frame is the view of the same frame in
    # any other colours (a red one for the blue), and it still tells a plank from a square.
    every = torch.arange(len(SCRAMBLES))
    view = lambda f: D.blocks(scramble_colours(f[:, :, 0].expand(len(every), -1, -1, -1), every)).mean(0)  # noqa: E731
    red = scramble_colours(frame[:, :, 0], torch.tensor([32]))[:, :, None]  # channels (B, R, G): a red plank
    square = frame.clone()
    square[..., 2:14, 2:14] = square[..., 4:12, 2:14].mean((3, 4), keepdim=True)
    assert torch.allclose(view(frame), view(red), atol=1e-5)
    assert not torch.allclose(view(frame), view(square), atol=1e-3)
    gan, cond = tiny_gan(tmp_path, d_img_views="factor", fake_cond="recompose_g")
    out = gan.step(lambda: (torch.rand(8, 3, 4, 16, 16) * 2 - 1, cond))  # and the step runs, GP included
    assert np.isfinite([out["loss_D"], out["loss_G"], out["gp_img"]]).all() and out["gp_img"] > 0
    with pytest.raises(ValueError, match="needs condition parts"):
        ImageD(10, ch=2, size=16, views="factor")


def red_blue_pillar(G: Generator, modules) -> list:
    """(clip, [what each of ``modules`` gave]) for a red square, a blue square (the same shape in
    another colour) and a red pillar (the same colour, another shape), all from one noise."""
    seen = {}
    for i, m in enumerate(modules):
        m.register_forward_hook(lambda m, args, out, i=i: seen.__setitem__(i, out))
    noise = G.noise(1, "cpu")
    return [(G(one_hot_captions([row], PARTS), noise), [seen[i] for i in range(len(modules))])
            for row in ((0, 1, 0), (0, 1, 2), (0, 2, 0))]


def assert_a_step_runs_and_word_parts_are_needed(tmp_path, cfg: dict, **lever):
    """A training step of the tiny GAN with the lever in ``cfg`` runs, and a G without word
    parts refuses the lever (``lever``: its Generator keyword)."""
    gan, cond = tiny_gan(tmp_path, fake_cond="recompose_g", **cfg)
    out = gan.step(lambda: (torch.rand(8, 3, 4, 16, 16) * 2 - 1, cond))
    assert np.isfinite([out["loss_D"], out["loss_G"]]).all()
    with pytest.raises(ValueError, match="needs condition parts"):
        Generator(10, z_dim=4, ch=2, frames=4, size=16, gru_dim=8, **lever)


def test_with_g_mod_blocks_the_colour_reaches_only_gs_last_layers(tmp_path):
    """g_mod_blocks=N: what G's earlier up-blocks lay out depends on the head word (the shape)
    and not on the modifier (the colour); the last N blocks and the output are coloured by it."""
    torch.manual_seed(0)
    G = Generator(sum(PARTS), z_dim=4, ch=2, frames=4, size=16, gru_dim=8, parts=PARTS, factorized=True,
                  mod_blocks=1).eval()
    (red, red_blocks), (blue, blue_blocks), (_, pillar_blocks) = red_blue_pillar(G, list(G.blocks))
    assert torch.equal(red_blocks[0], blue_blocks[0])  # block 0 of 2: the colour has not reached it
    assert not torch.allclose(red_blocks[1], blue_blocks[1]) and not torch.allclose(red, blue)
    assert not torch.allclose(red_blocks[0], pillar_blocks[0])  # the shape word reaches every block
    assert_a_step_runs_and_word_parts_are_needed(tmp_path, {"g_mod_blocks": 0}, mod_blocks=0)


def test_with_g_gru_head_gs_layout_follows_the_shape_word_and_never_the_colour(tmp_path):
    """g_gru_head: the 4x4 layouts G's GRU makes (where the object is) depend on the head word
    (the shape) as well as the template, and still not on the modifier (the colour)."""
    torch.manual_seed(0)
    for gru_head in (False, True):
        G = Generator(sum(PARTS), z_dim=4, ch=2, frames=4, size=16, gru_dim=8, parts=PARTS, factorized=True,
                      gru_head=gru_head).eval()
        (red, [red_layout]), (blue, [blue_layout]), (_, [pillar_layout]) = red_blue_pillar(G, [G.fc])
        assert torch.equal(red_layout, blue_layout) and not torch.allclose(red, blue)
        assert torch.equal(red_layout, pillar_layout) != gru_head  # the shape reaches the GRU only with gru_head
    assert_a_step_runs_and_word_parts_are_needed(tmp_path, {"g_gru_head": True}, gru_head=True)


def test_with_g_layered_a_colour_word_changes_the_objects_colour_and_never_its_outline(tmp_path):
    """g_layered: what G's convolutions draw (the background, the object's mask and shade) depends
    on the head word (the shape) and not on the modifier (the colour); the colour word reaches the
    clip only through the layer's colour, inside the mask."""
    torch.manual_seed(0)
    G = Generator(sum(PARTS), z_dim=4, ch=2, frames=4, size=16, gru_dim=8, parts=PARTS, factorized=True,
                  frame_blocks=1, layered=True).eval()
    (red, [red_layers]), (blue, [blue_layers]), (_, [pillar_layers]) = red_blue_pillar(G, [G.out])
    assert torch.equal(red_layers, blue_layers) and not torch.allclose(red, blue)
    assert not torch.allclose(red_layers, pillar_layers)
    # Where the mask is shut, the colour word changes nothing: red - blue is the mask times
    # the difference of the two layers.
    mask, shade = torch.sigmoid(red_layers[:, 3:4]), torch.sigmoid(red_layers[:, 4:5])
    with torch.no_grad():
        paint = lambda row: torch.tanh(G.paint(one_hot_captions([row], PARTS)[:, -PARTS[2]:]))  # noqa: E731
        layer = lambda row: (paint(row)[:, :, None, None, None] + 1) * shade - 1  # noqa: E731
        assert torch.allclose(red - blue, mask * (layer((0, 1, 0)) - layer((0, 1, 2))), atol=1e-5)
    assert red.shape == (1, 3, 4, 16, 16) and red.abs().max() <= 1
    assert_a_step_runs_and_word_parts_are_needed(tmp_path, {"g_layered": True}, layered=True)
    with pytest.raises(ValueError, match="mod_blocks does nothing with layered"):
        Generator(sum(PARTS), z_dim=4, ch=2, frames=4, size=16, gru_dim=8, parts=PARTS, layered=True, mod_blocks=1)
    # A run's config (debug_cpu sets g_layered) with a vocab that has no word parts: the original G.
    config = to_dict(TrainConfig(tmp_path, tmp_path, tmp_path, g_layered=True))
    assert build_generator(config, 10, PARTS).layered and not build_generator(config, 10, None).layered


@pytest.mark.parametrize("train", [True, False])
def test_the_channels_last_cbn_normalises_as_batchnorm_does(train):
    """CBN3d's own path for float32 channels-last activations (faster on CPU) gives BatchNorm's
    output, gradients and running statistics, in training and in eval mode."""
    torch.manual_seed(0)
    fast, ref = CBN3d(5, 7).train(train), CBN3d(5, 7).train(train)
    ref.load_state_dict(fast.state_dict())
    x = (torch.randn(3, 5, 4, 8, 8) * 2 + 1).contiguous(memory_format=torch.channels_last_3d).requires_grad_()
    y = torch.randn(3, 7)
    x_ref = x.detach().contiguous().requires_grad_()  # contiguous: BatchNorm's own kernel
    out_fast, out_ref = fast(x, y), ref(x_ref, y)
    assert out_fast.is_contiguous(memory_format=torch.channels_last_3d)
    assert torch.allclose(out_fast, out_ref, atol=1e-5)
    for a, b in zip(fast.state_dict().values(), ref.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)  # running stats and batch count too
    w = torch.randn_like(out_ref)
    g_fast = torch.autograd.grad((out_fast * w).sum(), [x, *fast.parameters()])
    g_ref = torch.autograd.grad((out_ref * w).sum(), [x_ref, *ref.parameters()])
    for a, b in zip(g_fast, g_ref):
        assert torch.allclose(a, b, atol=1e-4)
