"""The offline data world and the real-dataset loaders (course_lib.data)."""
from __future__ import annotations

import time
import urllib.error

import numpy as np
import pytest
import torch
import torchvision
from scipy import ndimage

import course_lib.data as data
from course_lib.data import real


# ----------------------------------------------------------------------------- shapes
@pytest.fixture(scope="module")
def mixed():
    """Half the images hold a second object."""
    return data.render_shapes(1500, size=32, seed=7, two_objects=0.5)


@pytest.fixture(scope="module")
def single():
    return data.render_shapes(1500, size=32, seed=8)


def test_render_is_deterministic():
    a = data.render_shapes(300, size=40, seed=3, two_objects=0.5)
    b = data.render_shapes(300, size=40, seed=3, two_objects=0.5)
    c = data.render_shapes(300, size=40, seed=4, two_objects=0.5)
    for field in ("images", "masks", "edges"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    torch.testing.assert_close(a.centers, b.centers, rtol=0, atol=0, equal_nan=True)
    assert all(torch.equal(a.attrs[k], b.attrs[k]) for k in data.ATTR_KEYS)
    assert a.captions == b.captions
    assert not torch.equal(a.images, c.images)


def test_batch_shapes_dtypes_and_ranges(mixed):
    n = len(mixed)
    assert mixed.images.shape == (n, 3, 32, 32) and mixed.images.dtype == torch.float32
    assert mixed.images.min() >= 0 and mixed.images.max() <= 1
    for m in (mixed.masks, mixed.edges):
        assert m.shape == (n, 1, 32, 32) and m.dtype == torch.float32
        assert set(m.unique().tolist()) == {0.0, 1.0}
    assert set(mixed.attrs) == set(data.ATTR_KEYS)
    assert all(v.shape == (n,) and v.dtype == torch.int64 for v in mixed.attrs.values())
    has2 = mixed.attrs["relation"] >= 0
    assert 0.4 < has2.float().mean() < 0.6
    for key in ("shape2", "colour2", "size2", "position2"):
        assert ((mixed.attrs[key] >= 0) == has2).all(), key
    assert len(mixed.captions) == n and mixed.centers.shape == (n, 2, 2)
    assert len(data.SHAPE_KINDS) >= 4 and len(data.COLOURS) == 6 and len(data.POSITIONS) == 9


@pytest.mark.exclusive
def test_render_10k_shapes_under_10_seconds():
    start = time.perf_counter()
    batch = data.render_shapes(10_000, size=32, seed=0, two_objects=0.3)
    seconds = time.perf_counter() - start
    print(f"render_shapes(10000, size=32, two_objects=0.3): {seconds:.2f} s")
    assert batch.images.shape == (10_000, 3, 32, 32)
    assert seconds < 10


def test_captions_parse_back_to_the_attributes(mixed):
    for i, caption in enumerate(mixed.captions):
        row, parsed = mixed.attr_row(i), data.parse_caption(caption)
        assert parsed is not None, caption
        fixed = {k: v for k, v in parsed.items() if v >= 0}
        assert fixed == {k: row[k] for k in fixed}, caption
        two = row["relation"] >= 0
        assert set(fixed) == set(data.ATTR_KEYS) - ({"position", "position2"} if two else
                                                     {"shape2", "colour2", "size2", "position2",
                                                      "relation"})
        assert data.caption_for(parsed) == caption


@pytest.mark.parametrize("text", [
    "", "a large red circle", "a large red circle at the", "a huge red circle at the top",
    "a large red circle at the middle", "large red circle at the top left",
    "a large red circle at the top left.", "a large red circle at the top left left of",
    "a small blue square left of a large green", "a small blue square near a large green circle",
    "a small blue square left of the large green circle", "A large red circle at the top",
    "a large red circle at the top a large red circle at the top", None, 42])
def test_malformed_captions_give_none(text):
    assert data.parse_caption(text) is None


def test_caption_grammar_examples_and_whitespace():
    assert data.parse_caption("  a large red circle   at the top left ")["position"] == 0
    two = data.parse_caption("a small blue square left of a large green triangle")
    assert two["relation"] == data.RELATIONS.index("left of") and two["position"] == -1
    assert two["shape2"] == data.SHAPE_KINDS.index("triangle")
    with pytest.raises(ValueError, match="colour"):
        data.caption_for({"shape": 0, "colour": 6, "size": 0, "position": 0})


def _colour_of(attrs, i, suffix=""):
    return torch.tensor(list(data.COLOURS.values())[int(attrs["colour" + suffix][i])])


@pytest.mark.parametrize("kind, area", [("circle", np.pi), ("square", 1.8 ** 2), ("diamond", 2.0),
                                        ("triangle", 2.0), ("cross", 2 * 2 * 0.68 - 0.68 ** 2)])
def test_coverage_is_area_accurate(kind, area):
    """Anti-aliased coverage sums to the shape's true area (in units of r^2), wherever it sits."""
    n, r = 50, 6.0
    centers = 16 + torch.rand(n, 2, generator=torch.Generator().manual_seed(0))
    kinds = torch.full((n,), data.SHAPE_KINDS.index(kind))
    cover = data.shape_coverage(kinds, centers, torch.full((n,), r), 32)
    assert cover.shape == (n, 32, 32) and 0 <= cover.min() and cover.max() <= 1
    torch.testing.assert_close(cover.sum((1, 2)), torch.full((n,), area * r * r), rtol=0.02, atol=0)


def test_masks_and_edges_match_the_images(single):
    x, masks = single.images, single.masks
    peak = torch.stack([_colour_of(single.attrs, i).max() for i in range(len(single))])
    coverage = x.amax(1, keepdim=True) / peak.view(-1, 1, 1, 1)   # black background: x = c * a
    assert torch.equal(masks, (coverage >= 0.5 - 1e-6).float())
    assert (x.amax(1, keepdim=True)[masks == 0] <= 0.5 * peak.max() + 1e-6).all()
    inside = torch.stack([_colour_of(single.attrs, i) for i in range(len(single))])
    inside = inside.view(-1, 3, 1, 1)
    full = coverage >= 1 - 1e-6                                      # fully covered pixels
    assert torch.allclose((x * full), (inside * full), atol=1e-5)
    eroded = ndimage.binary_erosion(masks.numpy().astype(bool),
                                    structure=ndimage.generate_binary_structure(2, 1)[None, None])
    assert np.array_equal(single.edges.numpy().astype(bool), masks.numpy().astype(bool) & ~eroded)
    assert (single.edges.flatten(1).sum(1) > 0).all()


def test_sizes_differ_clearly_and_positions_are_cells(single):
    peak = torch.stack([_colour_of(single.attrs, i).max() for i in range(len(single))])
    coverage = single.images.amax(1) / peak.view(-1, 1, 1)           # (N, H, W)
    area = coverage.flatten(1).sum(1)                                 # in pixels, anti-aliased
    for k in range(len(data.SHAPE_KINDS)):
        kind = single.attrs["shape"] == k
        small = area[kind & (single.attrs["size"] == 0)]
        large = area[kind & (single.attrs["size"] == 1)]
        assert large.min() > 2 * small.max(), data.SHAPE_KINDS[k]   # (1.5 x as wide)^2 = 2.25
    ys, xs = torch.meshgrid(torch.arange(32) + 0.5, torch.arange(32) + 0.5, indexing="ij")
    centroid = torch.stack([(coverage * xs).flatten(1).sum(1),
                            (coverage * ys).flatten(1).sum(1)], 1) / area[:, None]
    cell = data.cell_size(32)
    row, col = single.attrs["position"] // 3, single.attrs["position"] % 3
    expected = 1 + torch.stack([col, row], 1) * cell + cell / 2      # 1: the background frame
    assert (single.centers[:, 0] - expected).abs().max() <= data.JITTER * cell + 1e-4
    assert ((centroid - expected).abs() < 0.45 * cell).all()   # the mask sits in its cell too
    border = torch.ones(32, 32, dtype=torch.bool)
    border[1:-1, 1:-1] = False
    assert (single.images[..., border] == 0).all()             # never touches the frame edge


def test_two_object_relations_hold_geometrically(mixed):
    has2 = (mixed.attrs["relation"] >= 0).nonzero().squeeze(1)
    for i in has2.tolist():
        # two separate objects: no 8-connected path between their masks
        labels, count = ndimage.label(mixed.masks[i, 0].numpy(), structure=np.ones((3, 3)))
        assert count == 2, mixed.captions[i]
        (x1, y1), (x2, y2) = mixed.centers[i].tolist()
        r1, c1 = divmod(int(mixed.attrs["position"][i]), 3)
        r2, c2 = divmod(int(mixed.attrs["position2"][i]), 3)
        relation = data.RELATIONS[int(mixed.attrs["relation"][i])]
        assert {"left of": x1 < x2 and r1 == r2, "right of": x1 > x2 and r1 == r2,
                "above": y1 < y2 and c1 == c2, "below": y1 > y2 and c1 == c2}[relation]
        # each object's colour is where its centre is
        for (x, y), suffix in (((x1, y1), ""), ((x2, y2), "2")):
            pixel = mixed.images[i, :, int(y), int(x)]
            assert torch.allclose(pixel, _colour_of(mixed.attrs, i, suffix), atol=0.35)


def test_render_rejects_bad_arguments():
    with pytest.raises(ValueError, match="size"):
        data.render_shapes(4, size=100)
    with pytest.raises(ValueError, match="probability"):
        data.render_shapes(4, two_objects=1.5)


def test_shapes_dataset_items(single):
    ds = data.ShapesDataset(n=len(single), size=32, seed=8)
    x, attrs = ds[3]
    assert torch.equal(x, single.images[3]) and len(ds) == len(single)
    assert set(attrs) == set(data.ATTR_KEYS) and attrs["shape"].dim() == 0
    assert int(attrs["colour"]) == int(single.attrs["colour"][3])
    assert ds.captions[3] == single.captions[3] and ds.batch.images.shape == single.images.shape


# ----------------------------------------------------------------------------- moving shapes
def test_moving_shapes_move_in_the_captioned_direction():
    clips = data.render_moving_shapes(200, frames=12, size=32, seed=5)
    again = data.render_moving_shapes(200, frames=12, size=32, seed=5)
    assert torch.equal(clips.videos, again.videos) and clips.captions == again.captions
    v = clips.videos
    assert v.shape == (200, 12, 3, 32, 32) and v.dtype == torch.float32
    assert v.min() >= 0 and v.max() <= 1
    mass = v.amax(2)                                                   # (N, T, H, W)
    ys, xs = torch.meshgrid(torch.arange(32) + 0.5, torch.arange(32) + 0.5, indexing="ij")
    total = mass.flatten(2).sum(2)
    centroid = torch.stack([(mass * xs).flatten(2).sum(2), (mass * ys).flatten(2).sum(2)], 2)
    centroid = centroid / total[..., None]                             # (N, T, 2)
    moved = centroid[:, -1] - centroid[:, 0]
    unit = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
    for i, caption in enumerate(clips.captions):
        parsed = data.parse_moving_caption(caption)
        assert parsed == {k: int(clips.attrs[k][i]) for k in data.MOVING_ATTR_KEYS}
        assert data.moving_caption_for(parsed) == caption
        ux, uy = unit[caption.rsplit(" ", 1)[1]]
        along = moved[i, 0] * ux + moved[i, 1] * uy
        across = moved[i, 0] * uy - moved[i, 1] * ux
        assert along > 8 and abs(across) < 0.5, caption           # clearly visible, straight
        assert (total[i] > 0).all()                                 # never leaves the frame
    border = torch.ones(32, 32, dtype=torch.bool)
    border[1:-1, 1:-1] = False
    assert (v[..., border] == 0).all()
    assert data.parse_moving_caption("a small red circle moves sideways") is None


def test_moving_dataset_items():
    ds = data.MovingShapesDataset(n=4, frames=6, size=24, seed=1)
    video, attrs = ds[2]
    assert video.shape == (6, 3, 24, 24) and set(attrs) == set(data.MOVING_ATTR_KEYS)
    with pytest.raises(ValueError, match="frames"):
        data.render_moving_shapes(2, frames=1)


# ----------------------------------------------------------------------------- toys, digits
@pytest.mark.parametrize("name", data.TOYS)
def test_toys(name):
    x = data.sample_toy(name, 4000, seed=1)
    assert x.shape == (4000, 2) and x.dtype == torch.float32
    assert torch.equal(x, data.sample_toy(name, 4000, seed=1))
    assert not torch.equal(x, data.sample_toy(name, 4000, seed=2))
    assert x.mean(0).abs().max() < 0.3 and ((x.std(0) > 0.6) & (x.std(0) < 1.4)).all()
    point, label = data.ToyDataset(name, n=10, seed=1)[0]
    assert point.shape == (2,) and isinstance(label, int)


def test_toy_labels_are_components():
    x, y = data.sample_toy_labelled("8gaussians", 2000, seed=0)
    assert set(y.tolist()) == set(range(8))
    angle = torch.atan2(x[:, 1], x[:, 0]) % (2 * np.pi)
    assert ((angle / (2 * np.pi / 8)).round() % 8 == y).all()
    with pytest.raises(ValueError, match="8gaussians"):
        data.sample_toy("8gausians", 10)


def test_digits_split_and_resize():
    train, test = data.DigitsDataset("train", size=20), data.DigitsDataset("test", size=20)
    assert len(train) + len(test) == len(data.DigitsDataset("all", size=8)) == 1797
    assert train.images.shape == (len(train), 1, 20, 20) and train.labels.dtype == torch.int64
    assert 0 <= train.images.min() and train.images.max() <= 1 and train.images.max() > 0.9
    share = torch.bincount(test.labels, minlength=10) / torch.bincount(train.labels, minlength=10)
    assert ((share > 0.2) & (share < 0.3)).all()                      # stratified 80/20
    x, y = train[0]
    assert x.shape == (1, 20, 20) and isinstance(y, int) and train.classes[y] == str(y)
    assert torch.equal(data.DigitsDataset("train", size=20).images, train.images)
    with pytest.raises(ValueError, match="split"):
        data.DigitsDataset("validation")


# ----------------------------------------------------------------------------- load_dataset
def test_unknown_name_lists_the_valid_names():
    with pytest.raises(ValueError) as info:
        data.load_dataset("shapez")
    message = str(info.value)
    assert all(name in message for name in data.DATASETS) and "Did you mean 'shapes'" in message


@pytest.mark.parametrize("name", ["digits", "shapes", "moving_shapes", "moons", "mnist", "cifar10"])
def test_load_dataset_gives_x_y_pairs(name, tmp_path):
    kwargs = {}
    if name in data.REAL_DATASETS:
        data.write_standin(name, tmp_path, n_train=30, n_test=10)
        kwargs = {"root": tmp_path, "download": False, "verify": False}
    ds = data.load_dataset(name, "test", n=5, **kwargs)
    x, y = ds[4]
    assert len(ds) == 5 and x.dtype == torch.float32
    assert x.dim() == 1 or 0 <= x.min() <= x.max() <= 1


def test_load_dataset_splits_and_sizes():
    train = data.load_dataset("shapes", "train", n=50, size=24)
    test = data.load_dataset("shapes", "test", n=50, size=24)
    assert train[0][0].shape == (3, 24, 24)
    assert torch.equal(train.batch.images, data.ShapesDataset(n=50, size=24, seed=0).batch.images)
    assert not torch.equal(train.batch.images, test.batch.images)
    assert data.load_dataset("digits", size=32)[0][0].shape == (1, 32, 32)
    with pytest.raises(ValueError, match="split"):
        data.load_dataset("shapes", "validation")
    with pytest.raises(ValueError, match="items"):
        data.load_dataset("digits", "test", n=10_000)


# ----------------------------------------------------------------------------- real datasets
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_mnist_format_loads_through_torchvision(name, tmp_path):
    rng = np.random.default_rng(0)
    images = {split: rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
              for split, n in (("train", 12), ("test", 5))}
    labels = {s: rng.integers(0, 10, size=len(images[s])) for s in images}
    for split in images:
        data.write_mnist_format(tmp_path, images[split], labels[split], split, name=name)
    for split in images:
        ds = data.load_real(name, split, root=tmp_path, download=False)
        assert len(ds) == len(images[split])
        x, y = ds[3]
        assert x.shape == (1, 28, 28) and x.dtype == torch.float32
        assert torch.equal(x[0], torch.from_numpy(images[split][3]).float() / 255)
        assert y == labels[split][3]
    assert data.load_real(name, "train", root=tmp_path, size=14)[0][0].shape == (1, 14, 14)


def test_cifar10_format_loads_through_torchvision(tmp_path):
    rng = np.random.default_rng(1)
    images = {"train": rng.integers(0, 256, size=(11, 32, 32, 3), dtype=np.uint8),
              "test": rng.integers(0, 256, size=(4, 3, 32, 32), dtype=np.uint8)}
    labels = {s: rng.integers(0, 10, size=len(images[s])) for s in images}
    for split in images:
        data.write_cifar10_format(tmp_path, images[split], labels[split], split)
    train = data.load_real("cifar10", "train", root=tmp_path, download=False, verify=False)
    test = data.load_real("cifar10", "test", root=tmp_path, download=False, verify=False)
    assert len(train) == 11 and len(test) == 4 and train.classes[0] == "airplane"
    x, y = train[7]
    assert x.shape == (3, 32, 32)
    assert torch.equal(x, torch.from_numpy(images["train"][7]).permute(2, 0, 1).float() / 255)
    assert torch.equal(test[2][0], torch.from_numpy(images["test"][2]).float() / 255)
    assert y == labels["train"][7]
    # the official MD5 sums reject stand-in files: with verify on they count as missing
    with pytest.raises(data.DatasetUnavailableError, match="download=False"):
        data.load_real("cifar10", root=tmp_path, download=False)


@pytest.mark.parametrize("name, alternative", [("mnist", "digits"), ("fashion_mnist", "digits"),
                                               ("cifar10", "shapes")])
def test_offline_fails_fast_with_the_alternative(name, alternative, tmp_path, monkeypatch):
    downloads = []
    monkeypatch.setattr(real, "_reachable", lambda url, timeout=0: False)
    for cls in (torchvision.datasets.MNIST, torchvision.datasets.CIFAR10):
        monkeypatch.setattr(cls, "download", lambda self: downloads.append(self))
    start = time.perf_counter()
    with pytest.raises(data.DatasetUnavailableError) as info:
        data.load_dataset(name, root=tmp_path)
    assert time.perf_counter() - start < 2
    message = str(info.value)
    assert f"load_dataset('{alternative}')" in message and str(tmp_path) in message
    assert isinstance(info.value, RuntimeError) and not downloads   # it never tried to download


def test_failed_download_becomes_unavailable(tmp_path, monkeypatch):
    def refuse(self):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(real, "_reachable", lambda url, timeout=0: True)
    monkeypatch.setattr(torchvision.datasets.MNIST, "download", refuse)
    with pytest.raises(data.DatasetUnavailableError, match="unreachable") as info:
        data.load_real("mnist", root=tmp_path)
    assert isinstance(info.value.__cause__, urllib.error.URLError)


def test_probe_sees_a_listening_server_and_a_closed_port():
    import socket
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert real._reachable(f"http://127.0.0.1:{port}/data.gz", timeout=2)
    start = time.perf_counter()
    assert not real._reachable(f"http://127.0.0.1:{port}/data.gz", timeout=2)
    assert time.perf_counter() - start < 1                      # a refusal ends the wait


def test_probe_gives_up_on_a_hanging_connection(monkeypatch):
    def hang(*args, **kwargs):
        time.sleep(2)
        raise TimeoutError("timed out")  # what a real stalled connection ends with

    monkeypatch.setattr(real.socket, "create_connection", hang)
    start = time.perf_counter()
    assert real._reachable("https://example.invalid/file.gz", timeout=0.3) is False
    assert time.perf_counter() - start < 1


def test_stack_images_takes_the_first_n_inputs():
    from course_lib.data import stack_images
    ds = data.load_dataset("digits", n=20)
    x = stack_images(ds, 5)
    assert x.shape == (5, 1, 16, 16)
    assert torch.equal(x[3], ds[3][0])
    assert stack_images(ds).shape[0] == 20 and stack_images(ds, 1000).shape[0] == 20
    with pytest.raises(ValueError, match="at least one"):
        stack_images(ds, 0)
