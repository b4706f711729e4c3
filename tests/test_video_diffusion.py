"""The video model: temporal layers that start as the identity, see only their own clip, and train alone;
the video loss with given frames; sampling with given frames (course_lib.models.temporal, diffusion.video)."""
import pytest
import torch
from tiny_models import tiny_text_to_image

from course_lib.data.moving import DIRECTIONS, draw_speeds, render_moving_shapes
from course_lib.diffusion.video import (GivenFrames, generate_clips, generate_video, given_mask, motion_shifts,
                                        speeds_from_frames, split_motion_caption, video_loss, warped_noise)
from course_lib.models.temporal import TemporalBlock, VideoUNet
from course_lib.models.unet import UNet

T = 4


def _unet():
    """A small image U-Net with every weight random (a fresh one ends in a zero convolution: its output is 0)."""
    torch.manual_seed(0)
    unet = UNet(in_ch=4, base=16, mults=(1, 2), attn_levels=(1,), context_dim=8)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return unet


def _inputs(clips=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(clips * T, 4, 8, 8, generator=g)
    t = torch.randint(0, 1000, (clips * T,), generator=g)
    context = torch.randn(clips * T, 3, 8, generator=g)
    return x, t, context


def _randomise(video):
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in video.temporal_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return video


@pytest.mark.parametrize("space_time_levels", [(), (1,)])
def test_video_unet_starts_as_the_image_model_exactly(space_time_levels):
    unet = _unet()
    video = VideoUNet(unet, frames=T, motion_classes=len(DIRECTIONS), space_time_levels=space_time_levels)
    x, t, context = _inputs()
    with torch.no_grad():
        assert torch.equal(video(x, t, context, motion=torch.tensor([0, 3])), unet(x, t, context=context))


def test_only_the_temporal_layers_train_and_the_image_model_is_left_alone():
    unet = _unet()
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    video = VideoUNet(unet, frames=T, motion_classes=4)
    trainable = video.temporal_parameters()
    assert trainable and all(p.requires_grad for p in trainable)
    assert not any(p.requires_grad for n, p in video.named_parameters() if "temporal" not in n and "motion" not in n)
    assert set(video.temporal_state_dict()) == {n for n, p in video.named_parameters() if p.requires_grad}
    x, t, context = _inputs()
    video(x, t, context, motion=torch.tensor([1, 2])).pow(2).mean().backward()
    assert all(p.grad is not None for p in trainable)
    assert all(torch.equal(before[k], v) for k, v in unet.state_dict().items())
    assert all(p.requires_grad for p in unet.parameters())                 # the original is not frozen by the copy


def test_temporal_layers_mix_frames_of_one_clip_only():
    video = _randomise(VideoUNet(_unet(), frames=T, motion_classes=4))
    x, t, context = _inputs()
    with torch.no_grad():
        out = video(x, t, context)
        x2 = x.clone()
        x2[0] += 1.0                                                       # frame 0 of clip 0
        out2 = video(x2, t, context)
    changed = (out2 - out).flatten(1).abs().amax(1)
    assert changed[1:T].min() > 1e-4                                       # the other frames of clip 0 see it
    assert changed[T:].max() == 0                                          # clip 1 does not


def test_temporal_false_is_the_image_model_after_training():
    unet = _unet()
    video = _randomise(VideoUNet(unet, frames=T, motion_classes=4))
    x, t, context = _inputs()
    with torch.no_grad():
        assert not torch.equal(video(x, t, context), unet(x, t, context=context))
        assert torch.equal(video(x, t, context, temporal=False), unet(x, t, context=context))


def test_the_motion_label_reaches_the_temporal_layers():
    video = _randomise(VideoUNet(_unet(), frames=T, motion_classes=4))
    x, t, context = _inputs()
    with torch.no_grad():
        left = video(x, t, context, motion=torch.tensor([0, 0]))
        right = video(x, t, context, motion=torch.tensor([1, 0]))
        per_frame = video(x, t, context, motion=torch.tensor([1, 1, 1, 1, 0, 0, 0, 0]))
    assert (left[:T] - right[:T]).abs().max() > 1e-4 and torch.equal(left[T:], right[T:])
    assert torch.equal(per_frame, right)                                   # (B*T,) labels: one per clip


def test_temporal_block_checks_its_input():
    with pytest.raises(ValueError, match="divisible"):
        TemporalBlock(10, num_heads=4)
    with pytest.raises(ValueError, match="whole number"):
        TemporalBlock(8)(torch.randn(5, 8, 2, 2), frames=2)
    with pytest.raises(ValueError, match="whole number"):
        VideoUNet(_unet(), frames=3)(*_inputs())                          # 8 frames are not 3-frame clips
    with pytest.raises(ValueError, match="frames"):
        VideoUNet(_unet(), frames=1)


def test_split_motion_caption():
    assert split_motion_caption("a large red circle moves left") == ("a large red circle", 0)
    assert split_motion_caption(" a small blue square   moves down ") == ("a small blue square", 3)
    assert split_motion_caption(" moves  up ") == ("", 2)              # the appearance left open
    assert split_motion_caption("a red circle moves up") == ("a red circle", 2)          # any size
    assert split_motion_caption("a large shape moves right") == ("a large shape", 1)     # any colour and shape
    for bad in ("a large red circle at the top", "moves", "moves sideways", "a moves left", None,
                "a red large circle moves left", "large red circle moves left", "a red ring moves up"):
        with pytest.raises(ValueError, match="motion caption"):
            split_motion_caption(bad)


def test_given_mask():
    assert given_mask(2, 4, "none").sum() == 0
    assert given_mask(2, 4, "first").tolist() == [[True, False, False, False]] * 2
    assert given_mask(1, 4, "first_last").tolist() == [[True, False, False, True]]
    with pytest.raises(ValueError):
        given_mask(1, 4, "middle")


def test_video_loss_ignores_given_frames_and_shows_them_clean_at_t0():
    seen = {}

    class Spy(torch.nn.Module):
        frames = T

        def forward(self, x, t, context, context_mask, motion):
            seen["x"], seen["t"] = x.clone(), t.clone()
            return torch.zeros_like(x)

    latents = torch.randn(2, T, 4, 8, 8)
    given = given_mask(2, T, "first_last")
    g = torch.Generator().manual_seed(0)
    tiny = tiny_text_to_image()
    context, mask = torch.randn(2, 3, 8), torch.ones(2, 3, dtype=torch.bool)
    loss = video_loss(Spy(), latents, tiny.schedule, context, mask, torch.tensor([0, 1]), given, generator=g)
    g_flat = given.flatten()
    assert torch.equal(seen["x"][g_flat], latents.flatten(0, 1)[g_flat]) and (seen["t"][g_flat] == 0).all()
    assert (seen["t"][~g_flat] > 0).any()
    # the model predicted eps = 0, so the loss is the mean squared noise over the frames not given
    g = torch.Generator().manual_seed(0)
    torch.rand(2, generator=g)                                           # the same draws: t, then the noise
    noise = torch.randn(latents.flatten(0, 1).shape, generator=g)
    assert loss.item() == pytest.approx(noise[~g_flat].pow(2).mean().item(), rel=1e-5)


def test_noise_shift_visits_noisier_steps():
    class Spy(torch.nn.Module):
        frames = 1
        ts = []

        def forward(self, x, t, *args):
            self.ts.append(t)
            return torch.zeros_like(x)

    tiny = tiny_text_to_image()
    spy = Spy()
    lat = torch.zeros(4000, 1, 4, 2, 2)
    for shift in (1.0, 3.0):
        video_loss(spy, lat, tiny.schedule, torch.zeros(4000, 1, 8), torch.ones(4000, 1, dtype=torch.bool),
                   torch.zeros(4000, dtype=torch.long), generator=torch.Generator().manual_seed(0), noise_shift=shift)
    uniform, shifted = (t.float().mean() / tiny.schedule.T for t in spy.ts)
    assert uniform == pytest.approx(0.5, abs=0.02) and shifted == pytest.approx(0.75, abs=0.02)   # E[u^(1/3)] = 3/4
    with pytest.raises(ValueError):
        video_loss(spy, lat[:1], tiny.schedule, torch.zeros(1, 1, 8), None, torch.zeros(1), noise_shift=0)


def test_given_frames_wrapper():
    calls = {}

    def fn(x, t):
        calls["x"], calls["t"] = x, t
        return x

    latents = torch.full((4, 2, 1, 1), 7.0)
    wrapped = GivenFrames(fn, latents, torch.tensor([True, False, False, True]))
    wrapped(torch.zeros(4, 2, 1, 1), torch.full((4,), 500))
    assert calls["x"][:, :, 0, 0].tolist() == [[7, 7], [0, 0], [0, 0], [7, 7]]
    assert calls["t"].tolist() == [0, 500, 500, 0]


def test_untrained_video_model_samples_the_image_model_frame_by_frame():
    tiny = tiny_text_to_image()
    video = VideoUNet(tiny.unet, frames=T, motion_classes=4)
    captions = ["a large red circle moves left", "a small blue square moves up"]
    kw = dict(guidance_scale=2.0, steps=3, image_size=16)
    with_time = generate_video(tiny, video, captions, generator=torch.Generator().manual_seed(0), **kw)
    frame_by_frame = generate_video(tiny, video, captions, generator=torch.Generator().manual_seed(0), temporal=False,
                                    **kw)
    assert with_time.shape == (2, T, 3, 16, 16) and torch.equal(with_time, frame_by_frame)
    _randomise(video)
    trained = generate_video(tiny, video, captions, generator=torch.Generator().manual_seed(0), **kw)
    assert not torch.equal(trained, frame_by_frame)


def test_generate_video_keeps_the_given_frames():
    tiny = tiny_text_to_image()
    video = _randomise(VideoUNet(tiny.unet, frames=T, motion_classes=4))
    clips = render_moving_shapes(2, frames=T, size=16, seed=0)
    given = given_mask(2, T, "first")
    out = generate_video(tiny, video, clips.captions, steps=2, image_size=16, given_frames=clips.videos, given=given,
                         generator=torch.Generator().manual_seed(0))
    expected = tiny.decode_latents(tiny.encode_images(clips.videos[:, 0] * 2 - 1))   # the autoencoder's round trip
    assert torch.allclose(out[:, 0], expected, atol=1e-6)
    with pytest.raises(ValueError, match="given_frames"):
        generate_video(tiny, video, clips.captions, steps=2, image_size=16, given=given)


def test_generate_clips_hands_in_the_frames_its_mode_names():
    tiny = tiny_text_to_image()
    video = _randomise(VideoUNet(tiny.unet, frames=T, motion_classes=4))
    clips = render_moving_shapes(2, frames=T, size=16, seed=0)
    kw = dict(steps=2, guidance_scale=2.0)
    for mode in ("none", "first", "first_last"):
        given = given_mask(2, T, mode) if mode != "none" else None
        by_hand = generate_video(tiny, video, clips.captions, image_size=16, generator=torch.Generator().manual_seed(3),
                                 given_frames=None if given is None else clips.videos, given=given, **kw)
        assert torch.equal(generate_clips(tiny, video, clips, mode, seed=3, **kw), by_hand), mode
    other = ["moves left", "moves up"]
    assert torch.equal(generate_clips(tiny, video, clips, seed=3, captions=other, **kw),
                       generate_video(tiny, video, other, image_size=16, generator=torch.Generator().manual_seed(3),
                                      **kw))


def test_motion_shifts_follow_the_direction_and_speed():
    shifts = motion_shifts(torch.tensor([0, 1, 2, 3]), torch.tensor([2.0, 2.0, 4.0, 1.0]), frames=3, scale=0.5)
    assert shifts.tolist() == [[[0, 0], [-1, 0], [-2, 0]], [[0, 0], [1, 0], [2, 0]],
                               [[0, 0], [0, -2], [0, -4]], [[0, 0], [0, 0], [0, 1]]]   # 0.5 rounds to even: 0


def test_warped_noise_moves_frame_zero_and_stays_standard_normal():
    shifts = motion_shifts(torch.tensor([1, 2]), torch.tensor([2.0, 4.0]), frames=T, scale=0.5)
    moved = warped_noise(shifts, (4, 8, 8), 1.0, torch.Generator().manual_seed(0)).view(2, T, 4, 8, 8)
    for t in range(T):                       # rho = 1: frame t is frame 0 rolled t pixels right / 2t pixels up
        assert torch.equal(moved[0, t], torch.roll(moved[0, 0], t, dims=-1))
        assert torch.equal(moved[1, t], torch.roll(moved[1, 0], -2 * t, dims=-2))
    mixed = warped_noise(shifts.repeat(400, 1, 1), (4, 8, 8), 0.5, torch.Generator().manual_seed(1)).view(800, T, -1)
    assert mixed.mean().abs() < 0.01 and (mixed.std() - 1).abs() < 0.01
    # half the variance is shared: frame 0 and frame 1 rolled back correlate at rho (clips moving right)
    back = torch.roll(mixed.view(800, T, 4, 8, 8)[::2, 1], -1, dims=-1)
    corr = torch.corrcoef(torch.stack([mixed[::2, 0].flatten(), back.flatten()]))[0, 1]
    assert corr == pytest.approx(0.5, abs=0.02)
    fresh = warped_noise(shifts, (4, 8, 8), 0.0, torch.Generator().manual_seed(0)).view(2, T, 4, 8, 8)
    assert not torch.allclose(fresh[0, 1], torch.roll(fresh[0, 0], 1, dims=-1))


def test_speeds_from_two_frames_and_from_the_prior():
    clips = render_moving_shapes(32, frames=8, size=32, seed=2)
    assert torch.allclose(speeds_from_frames(clips.videos[:, 0], clips.videos[:, -1], 8), clips.speeds, atol=0.05)
    drawn = draw_speeds(clips.attrs["size"], 8, 32, torch.Generator().manual_seed(0))
    many = render_moving_shapes(2000, frames=8, size=32, seed=3)
    for size in (0, 1):                      # the prior spans what the renderer draws for that size
        real = many.speeds[many.attrs["size"] == size]
        mine = drawn[clips.attrs["size"] == size]
        assert real.min() - 0.01 <= mine.min() and mine.max() <= real.max() + 0.01


def test_video_loss_on_warped_noise_uses_it():
    seen = {}

    class Spy(torch.nn.Module):
        frames = T

        def forward(self, x, t, context, context_mask, motion):
            seen["x"] = x.clone()
            return torch.zeros_like(x)

    tiny = tiny_text_to_image()
    latents = torch.zeros(1, T, 4, 8, 8)            # x_t = sqrt(1 - a_bar) eps: the noise itself, scaled
    shifts = motion_shifts(torch.tensor([1]), torch.tensor([2.0]), T, 0.5)
    video_loss(Spy(), latents, tiny.schedule, torch.zeros(1, 3, 8), torch.ones(1, 3, dtype=torch.bool),
               torch.tensor([1]), generator=torch.Generator().manual_seed(0), shifts=shifts, rho=1.0)
    x = seen["x"]
    assert torch.allclose(x[2], torch.roll(x[0], 2, dims=-1))


def test_generate_clips_runs_in_batches_with_one_generator():
    tiny = tiny_text_to_image()
    video = _randomise(VideoUNet(tiny.unet, frames=T, motion_classes=4))
    clips = render_moving_shapes(5, frames=T, size=16, seed=0)
    kw = dict(steps=2, guidance_scale=2.0)
    batched = generate_clips(tiny, video, clips, seed=3, batch_size=2, **kw)
    assert batched.shape == (5, T, 3, 16, 16) and torch.equal(batched, generate_clips(tiny, video, clips, seed=3,
                                                                                      batch_size=2, **kw))
    g = torch.Generator().manual_seed(3)               # the batches draw from one generator, one after the other
    by_hand = [generate_video(tiny, video, clips.captions[i:i + 2], image_size=16, generator=g, **kw)
               for i in range(0, 5, 2)]
    assert torch.equal(batched, torch.cat(by_hand))


def test_warped_sampling_changes_the_clips_and_follows_the_model():
    tiny = tiny_text_to_image()
    video = _randomise(VideoUNet(tiny.unet, frames=T, motion_classes=4))
    clips = render_moving_shapes(2, frames=T, size=16, seed=0)
    kw = dict(steps=2, guidance_scale=2.0)
    plain = generate_clips(tiny, video, clips, seed=3, **kw)
    assert torch.equal(generate_clips(tiny, video, clips, seed=3, warp=0.0, **kw), plain)
    warped = generate_clips(tiny, video, clips, seed=3, warp=1.0, **kw)
    assert warped.shape == plain.shape and not torch.equal(warped, plain)
    # without speeds, generate_video draws them from the prior (seed + 1), as generate_clips does
    alone = generate_video(tiny, video, clips.captions, image_size=16, warp=1.0,
                           generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(alone, warped)
    with pytest.raises(ValueError, match="speeds"):
        generate_video(tiny, video, clips.captions, image_size=16, warp=1.0, speeds=torch.ones(3), **kw)
    with pytest.raises(ValueError, match="0 to 1"):
        generate_clips(tiny, video, clips, seed=3, warp=1.5, **kw)
    # a module trained on warped noise samples with it by default; the per-frame image model never does
    video.warp = 1.0
    assert torch.equal(generate_clips(tiny, video, clips, seed=3, **kw), warped)
    assert torch.equal(generate_clips(tiny, video, clips, seed=3, temporal=False, **kw),
                       generate_clips(tiny, video, clips, seed=3, temporal=False, warp=0.0, **kw))
