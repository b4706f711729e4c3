"""course_lib.viz: grids, figures, animations and sliders, headless (Agg)."""
import io
import types

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

matplotlib.use("Agg")

from course_lib import viz  # noqa: E402
from course_lib.viz import (  # noqa: E402
    Animation,
    ShownFigure,
    animate,
    compare,
    frames_to_gif_bytes,
    make_grid,
    plot_curves,
    show_images,
    slider,
    smooth_curve,
)

# --- make_grid -----------------------------------------------------------------------------

@pytest.mark.parametrize("images, expected", [
    (torch.rand(10, 3, 4, 5), (2 * 4 + 1, 8 * 5 + 7, 3)),   # (N, C, H, W): 8 per row, 1 px gaps
    (torch.rand(3, 4, 5), (4, 5, 3)),                         # (C, H, W)
    (torch.rand(6, 4, 5), (4, 6 * 5 + 5, 1)),                 # (N, H, W)
    (torch.rand(4, 5), (4, 5, 1)),                            # (H, W)
    (np.random.rand(2, 4, 5, 3), (4, 11, 3)),                 # (N, H, W, C) channels-last
    (np.random.rand(4, 5, 3), (4, 5, 3)),                     # (H, W, C)
    ([torch.rand(1, 4, 5), torch.rand(1, 4, 5)], (4, 11, 1)),  # a list of images
])
def test_make_grid_layouts(images, expected):
    grid = make_grid(images)
    assert grid.shape == expected and grid.dtype == np.float32
    assert 0 <= grid.min() and grid.max() <= 1


def test_make_grid_places_images_row_by_row():
    images = torch.arange(5).float().reshape(5, 1, 1, 1) / 4  # five 1x1 images 0, .25, ... 1
    grid = make_grid(images, nrow=2, padding=1, value_range=(0, 1))[..., 0]
    assert grid.shape == (5, 3)
    assert grid[0, 0] == 0 and grid[0, 2] == 0.25 and grid[2, 0] == 0.5 and grid[4, 0] == 1
    assert grid[1].tolist() == [1, 1, 1] and grid[4, 2] == 1  # padding and the empty cell: white


@pytest.mark.parametrize("images, value_range, expected", [
    (torch.tensor([-1.0, 0.0, 1.0]), None, [0, 0.5, 1]),       # negative -> [-1, 1]
    (torch.tensor([0.0, 0.5, 1.0]), None, [0, 0.5, 1]),        # [0, 1]
    (torch.tensor([0.0, 51.0, 255.0]), None, [0, 0.2, 1]),     # > 1 -> [0, 255]
    (torch.tensor([0, 51, 255], dtype=torch.uint8), None, [0, 0.2, 1]),
    (torch.tensor([0.0, 5.0, 10.0]), (0, 5), [0, 1, 1]),       # clipped
    (torch.tensor([2.0, 3.0, 4.0]), "minmax", [0, 0.5, 1]),
])
def test_value_ranges(images, value_range, expected):
    grid = make_grid(images.reshape(1, 1, 1, 3), value_range=value_range)
    assert grid[0, :, 0] == pytest.approx(expected)


def test_minmax_is_per_image():
    images = torch.stack([torch.tensor([0.0, 1.0]), torch.tensor([10.0, 30.0])]).reshape(2, 1, 1, 2)
    grid = make_grid(images, value_range="minmax", padding=0)
    assert grid[0, :, 0].tolist() == [0, 1, 0, 1]


def test_bad_input_errors():
    with pytest.raises(ValueError, match=r"expects .*\(N, C, H, W\).*got \(2, 4, 8, 8\)"):
        make_grid(torch.zeros(2, 4, 8, 8))
    with pytest.raises(ValueError, match="use animate"):
        show_images(torch.zeros(2, 3, 1, 8, 8))
    with pytest.raises(ValueError, match="value_range"):
        make_grid(torch.zeros(1, 8, 8), value_range="auto")
    with pytest.raises(ValueError, match="lo < hi"):
        make_grid(torch.zeros(1, 8, 8), value_range=(1, 0))
    with pytest.raises(ValueError, match="nrow"):
        make_grid(torch.zeros(1, 8, 8), nrow=0)
    with pytest.raises(TypeError, match="tensor or numpy array"):
        make_grid("not an image")
    with pytest.raises(ValueError, match="different shapes"):
        make_grid([torch.zeros(1, 8, 8), torch.zeros(1, 4, 4)])
    with pytest.raises(ValueError, match="3 labels for 2 images"):
        show_images(torch.zeros(2, 1, 8, 8), labels=["a", "b", "c"])
    with pytest.warns(UserWarning, match="NaN"):
        make_grid(torch.tensor([[float("nan"), 1.0]]))


# --- figures -------------------------------------------------------------------------------

def image_axes(fig):
    return [ax for ax in fig.axes if ax.images]


def test_show_images_draws_a_clean_grid(tmp_path):
    fig = show_images(torch.rand(10, 1, 8, 8), title="digits", save=tmp_path / "grid.png")
    assert isinstance(fig, ShownFigure)
    (ax,) = image_axes(fig)
    assert ax.images[0].get_cmap().name == "gray"            # grayscale for C == 1
    assert ax.get_xticks().size == 0 and ax.get_yticks().size == 0
    assert fig._suptitle.get_text() == "digits"
    assert Image.open(tmp_path / "grid.png").format == "PNG"
    labelled = show_images(torch.rand(5, 3, 8, 8), nrow=3, labels=[0, 1, 2, 3, 4])
    assert [ax.get_title() for ax in image_axes(labelled)] == ["0", "1", "2", "3", "4"]
    assert len(labelled.axes) == 6  # 2 rows x 3, the last one empty and hidden


def test_compare_labels_each_row(tmp_path):
    fig = compare({"real": torch.rand(4, 1, 8, 8), "generated": torch.rand(4, 3, 8, 8) * 2 - 1},
                  title="t", save=tmp_path / "c.png")
    assert [ax.get_ylabel() for ax in image_axes(fig)] == ["real", "generated"]
    assert (tmp_path / "c.png").exists()
    with pytest.raises(TypeError, match="non-empty dict"):
        compare({})


def test_plot_curves_and_smoothing(tmp_path):
    assert smooth_curve([1, 2, 3, 4], 2).tolist() == [1, 1.5, 2.5, 3.5]
    assert smooth_curve([1, 5], 1).tolist() == [1, 5]
    fig = plot_curves({"train": np.linspace(1, 0.1, 100), "val": torch.linspace(1, 0.2, 50)},
                      smooth=10, logy=True, ylabel="loss", save=tmp_path / "curves.png")
    ax = fig.axes[0]
    assert len(ax.lines) == 4  # raw (faint) + smoothed for each curve
    assert ax.lines[0].get_alpha() < 0.5 and ax.get_yscale() == "log"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["train", "val"]
    assert len(plot_curves([3, 2, 1]).axes[0].lines) == 1
    with pytest.raises(ValueError, match="non-empty 1-D"):
        plot_curves({"loss": []})
    with pytest.raises(ValueError, match="smooth"):
        plot_curves([1, 2], smooth=0.9)


def test_plot_training_draws_a_fit_result():
    result = types.SimpleNamespace(history={"loss": list(np.linspace(2, 1, 100)), "lr": [1e-3] * 100},
                                   steps=100)
    ax = viz.plot_training(result).axes[0]
    assert len(ax.lines) == 2                                   # raw and smoothed (window 100 // 50)
    np.testing.assert_allclose(ax.lines[1].get_ydata(), smooth_curve(result.history["loss"], 2))
    assert len(viz.plot_training(result, keys=("loss", "lr"), smooth=1).axes[0].lines) == 2
    with pytest.raises(KeyError, match="'kl'.*lr"):
        viz.plot_training(result, keys=("kl",))
    with pytest.raises(TypeError, match="history"):
        viz.plot_training([1, 2, 3])


class Node:                        # the shape of Phase 1 · 03's Value: edges = ((operand, local), ...)
    def __init__(self, label, *edges, op=""):
        self.label, self.edges, self.op, self.data, self.grad = label, edges, op, 1.0, 0.5


def test_graph_layout_columns_and_heights():
    a, b, c = Node("a"), Node("b"), Node("c")
    ab = Node("ab", (a, 2.0), (b, 3.0), op="*")
    out = Node("out", (ab, 1.0), (c, 1.0), op="+")              # c is used only by the last node
    nodes, pos = viz.graph_layout(out)
    assert nodes[0] is out and {id(n) for n in nodes} == {id(n) for n in (a, b, c, ab, out)}
    col = {n.label: pos[id(n)][0] / 2.2 for n in nodes}
    assert col == {"a": 0, "b": 0, "ab": 1, "c": 1, "out": 2}   # inputs just left of their first use
    height = {n.label: pos[id(n)][1] / 1.1 for n in nodes}
    assert sorted(height[k] for k in "abc") == [-2, -1, 0]        # inputs evenly spaced
    assert height["ab"] == pytest.approx((height["a"] + height["b"]) / 2)   # mean of its operands
    assert height["out"] == pytest.approx((height["ab"] + height["c"]) / 2)
    shared = Node("x")                                           # a node reached along two paths
    assert len(viz.graph_layout(Node("sq", (shared, 1.0), (shared, 1.0), op="*"))[0]) == 2


def test_draw_graph_one_box_per_node_one_label_per_edge(tmp_path):
    a, b = Node("a"), Node("b")
    out = Node("out", (a, 2.0), (b, -3.0), op="*")
    fig = viz.draw_graph(out, title="t", save=tmp_path / "graph.png")
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert sum("data 1.000" in t for t in texts) == 3             # three boxes
    assert "2" in texts and "-3" in texts                        # local derivatives on the edges
    assert any(t.startswith("out = *") for t in texts) and any(t.startswith("a (input)") for t in texts)
    assert (tmp_path / "graph.png").stat().st_size > 0
    with pytest.raises(TypeError, match="edges"):
        viz.draw_graph(3.0)


# --- animations ----------------------------------------------------------------------------

def gif_frames(data):
    gif = Image.open(io.BytesIO(data))
    frames = []
    for i in range(gif.n_frames):
        gif.seek(i)
        frames.append(np.asarray(gif.convert("L")))
    return frames


def test_animate_writes_a_gif(tmp_path):
    frames = torch.rand(6, 4, 1, 8, 8)  # (T, N, C, H, W)
    anim = animate(frames, fps=5, nrow=2, save=tmp_path / "a.gif", titles=[f"t={t}" for t in range(6)])
    assert isinstance(anim, Animation) and anim.data[:6] == b"GIF89a"
    assert (tmp_path / "a.gif").read_bytes() == anim.data
    gif = Image.open(tmp_path / "a.gif")
    assert gif.n_frames == 6 and gif.info["duration"] == 200
    assert gif.width >= 4 * (2 * 8 + 1)  # small frames are enlarged
    assert len(gif_frames(animate(torch.rand(3, 1, 8, 8)).data)) == 3  # (T, C, H, W)
    with pytest.raises(ValueError, match=".gif"):
        animate(frames, save=tmp_path / "a.mp4")
    with pytest.raises(ValueError, match="2 titles for 6 frames"):
        animate(frames, titles=["a", "b"])


def test_animate_uses_one_range_for_all_frames():
    first = torch.full((1, 1, 4, 4), 0.0)
    first[0, 0, 0, 0] = -1.0            # makes the guessed range [-1, 1] for the whole clip
    second = torch.zeros(1, 1, 4, 4)    # alone it would be guessed [0, 1] and drawn black
    a, b = gif_frames(animate([first, second]).data)
    assert a[-1, -1] == b[-1, -1] == pytest.approx(128, abs=2)


def test_frames_to_gif_bytes():
    data = frames_to_gif_bytes([np.zeros((4, 4)), np.ones((4, 4, 3))], fps=10)
    assert len(gif_frames(data)) == 2
    with pytest.raises(ValueError, match="same size"):
        frames_to_gif_bytes([np.zeros((4, 4)), np.zeros((5, 5))])


# --- showing exactly once --------------------------------------------------------------------

@pytest.fixture
def fake_kernel(monkeypatch):
    """Pretend to run in a Jupyter kernel; collect what would be displayed."""
    shell = types.SimpleNamespace(execution_count=1)
    shown = []
    monkeypatch.setattr(viz, "_kernel_shell", lambda: shell)
    monkeypatch.setattr("IPython.display.display", lambda obj, **kw: shown.append(obj))
    return shell, shown


def test_figures_show_once_per_cell(fake_kernel):
    shell, shown = fake_kernel
    fig = show_images(torch.rand(2, 1, 8, 8))
    assert len(shown) == 1 and shown[0].format == "png"
    fig._ipython_display_()   # the same cell's last-line value: skipped
    assert len(shown) == 1
    shell.execution_count = 2  # `fig` alone in a later cell: shown again
    fig._ipython_display_()
    assert len(shown) == 2
    animate(torch.rand(2, 1, 8, 8))._ipython_display_()
    assert len(shown) == 3 and shown[2].format == "gif"


def test_nothing_is_displayed_outside_a_kernel(monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj, **kw: shown.append(obj))
    show_images(torch.rand(2, 1, 8, 8))
    assert shown == [] and viz._kernel_shell() is None


def test_in_a_real_notebook_every_picture_shows_exactly_once():
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    cells = ["import torch\nfrom course_lib.viz import show_images, animate\nx = torch.rand(4, 1, 8, 8)",
             "show_images(x)",                       # last line: one picture, not two
             "fig = show_images(x)\nfig",
             "for _ in range(2):\n    show_images(x)",
             "fig",                                  # shown again in a later cell
             "import matplotlib.pyplot as plt\nshow_images(x)\nplt.show()",
             "animate(torch.rand(3, 2, 1, 8, 8))"]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nbclient.NotebookClient(nb, timeout=60, kernel_name="python3").execute()
    pictures = [[next(k for k in o["data"] if k.startswith("image/")) for o in cell.outputs]
                for cell in nb.cells]
    assert pictures == [[], ["image/png"], ["image/png"], ["image/png"] * 2, ["image/png"],
                        ["image/png"], ["image/gif"]]


# --- sliders ---------------------------------------------------------------------------------

def test_widget_front_end_detection(monkeypatch):
    for var in ("CI", "COURSE_STATIC_WIDGETS"):
        monkeypatch.delenv(var, raising=False)
    assert not viz.widgets_are_live()  # plain python: no kernel
    monkeypatch.setattr(viz, "_kernel_shell", lambda: object())
    assert viz.widgets_are_live()
    monkeypatch.setenv("COURSE_STATIC_WIDGETS", "1")
    assert not viz.widgets_are_live()
    monkeypatch.setenv("COURSE_STATIC_WIDGETS", "0")
    monkeypatch.setenv("CI", "true")
    assert not viz.widgets_are_live()


def test_static_slider_sweeps_the_first_numeric_parameter():
    calls = []

    def noisy(mode="b", t=500, scale=2.0):
        calls.append((mode, t, scale))
        return torch.full((2, 1, 8, 8), t / 999)

    fig = slider(noisy, mode=["a", "b"], t=(0, 999, 1), scale=2.0)
    assert isinstance(fig, ShownFigure)
    assert calls == [("b", t, 2.0) for t in (0, 250, 500, 749, 999)]  # others at fn's defaults
    assert [ax.get_title() for ax in fig.axes] == [f"t = {t}" for t in (0, 250, 500, 749, 999)]


def test_static_slider_accepts_figures_and_pyplot():
    import matplotlib.pyplot as plt

    def drawn(k=1):
        plt.figure()
        plt.plot(range(k + 2))

    fig = slider(drawn, k=[1, 2, 3])
    assert len(fig.axes) == 3 and plt.get_fignums() == []  # pyplot figures are closed again
    assert len(slider(lambda k: show_images(torch.rand(1, 1, 4, 4)), k=[1, 2]).axes) == 2
    assert len(slider(lambda k: show_images(torch.rand(1, 1, 4, 4)) and None, k=[1, 2]).axes) == 2
    with pytest.raises(ValueError, match="returned None"):
        slider(lambda k: None, k=[1, 2])
    with pytest.raises(ValueError, match="at least one parameter"):
        slider(drawn)
    with pytest.raises(ValueError, match=r"\(lo, hi\)"):
        slider(drawn, k=(1, 2, 3, 4))


def test_live_slider_redraws_on_change(fake_kernel, monkeypatch):
    import ipywidgets

    _, shown = fake_kernel
    monkeypatch.setattr(viz, "widgets_are_live", lambda: True)
    calls = []
    def draw(t=250, mode="a"):
        calls.append((t, mode))
        return torch.rand(1, 1, 4, 4)

    assert slider(draw, t=[0, 250, 999], mode=["a", "b"]) is None
    (box,) = [w for w in shown if isinstance(w, ipywidgets.VBox)]
    t_widget, mode_widget = box.children[:2]
    assert isinstance(t_widget, ipywidgets.SelectionSlider) and isinstance(mode_widget, ipywidgets.Dropdown)
    t_widget.value = 999
    assert calls == [(250, "a"), (999, "a")]  # starts at fn's default


# --- the mask editor -------------------------------------------------------------------------

def _square_mask(size=32, lo=8, hi=24):
    mask = torch.zeros(size, size)
    mask[lo:hi, lo:hi] = 1
    return mask


def test_static_mask_editor_runs_fn_on_the_start_mask_snapped_to_the_grid():
    seen = []

    def painted(mask):
        seen.append(mask)
        return mask.expand(-1, 3, -1, -1) * torch.tensor([1.0, 0, 0]).view(1, 3, 1, 1)

    start = _square_mask()
    start[0, 0] = start[30:32, 30] = 1           # cells of 2 x 2 px: on when at least half painted
    fig = viz.mask_editor(painted, start[None, None])
    assert isinstance(fig, ShownFigure) and len(fig.axes) == 2
    (mask,) = seen
    expected = _square_mask()
    expected[30:32, 30:32] = 1
    assert mask.shape == (1, 1, 32, 32) and torch.equal(mask[0, 0], expected)
    with pytest.raises(ValueError, match="dividing"):
        viz.mask_editor(painted, start, cells=5)
    with pytest.raises(ValueError, match="square"):
        viz.mask_editor(painted, torch.zeros(2, 32, 32))


def test_mask_editor_paints_clears_and_runs(fake_kernel, monkeypatch):
    import ipywidgets

    _, shown = fake_kernel
    monkeypatch.setattr(viz, "widgets_are_live", lambda: True)
    seen = []
    assert viz.mask_editor(lambda mask: seen.append(mask.clone()) or mask, _square_mask(), cells=16) is None
    (box,) = [w for w in shown if isinstance(w, ipywidgets.HBox)]
    assert len(seen) == 1 and torch.equal(seen[0][0, 0], _square_mask())      # it draws once on opening
    editor = viz.MaskEditor(lambda mask: seen.append(mask.clone()) or mask, _square_mask(), cells=16)
    assert sum(b.value for b in editor.buttons) == 64                          # 8 x 8 cells of 2 x 2 px
    editor.clear()
    editor.buttons[16 * 3 + 5].value = True                                    # row 3, column 5
    editor.run_button.click()
    expected = torch.zeros(32, 32)
    expected[6:8, 10:12] = 1
    assert torch.equal(seen[-1][0, 0], expected)
