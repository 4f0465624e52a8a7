"""What the node's detections are made of, without ROS: connected regions of masks, 3-D from a depth image,
the labelled cloud, and compressed images (JPEG, PNG) decoded or rejected."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from synseg_ros import conversions, depth, regions, rendering
from synseg_ros.segmenter import FakeSegmenter
from tests import depth_scene as scene

MAX_DEPTH = 5.0


def random_masks(count: int, seed: int) -> list[np.ndarray]:
    """Masks of blobs of many sizes, a few touching only diagonally (8-connected, not 4-connected), and a ring
    with a region inside its hole."""
    rng = np.random.default_rng(seed)
    masks = []
    for _ in range(count):
        mask = np.zeros((60, 80), np.uint8)
        for _ in range(6):
            x, y, r = int(rng.integers(0, 80)), int(rng.integers(0, 60)), int(rng.integers(1, 8))
            cv2.circle(mask, (x, y), r, 255, -1)
        mask[rng.random((60, 80)) < 0.01] = 255                 # speckle: regions of one or two pixels
        mask[0, 0] = mask[1, 1] = 255                           # one region by a diagonal
        cv2.circle(mask, (60, 30), 12, 255, 2)                  # a ring ...
        mask[28:33, 58:63] = 255                                # ... and a region in its hole
        masks.append(mask)
    return masks


def components(mask: np.ndarray) -> list[tuple[int, tuple[int, int, int, int]]]:
    """(pixels, box) of each 8-connected region, by flood fill: the test's own connected components."""
    seen = np.zeros(mask.shape, bool)
    out = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        stack, pixels = [(y0, x0)], []
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            pixels.append((y, x))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        stack.append((ny, nx))
        ys, xs = np.array(pixels).T
        out.append((len(pixels), (int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1)))
    return out


@pytest.mark.parametrize("min_pixels", [1, 5, 40])
def test_regions_are_the_connected_components_of_at_least_min_pixels(min_pixels):
    masks = random_masks(4, seed=min_pixels)
    masks.insert(2, np.zeros((60, 80), np.uint8))               # an absent label
    found = regions.find_regions(masks, min_pixels)
    by_label = {label.label_index: label for label in found}
    assert 2 not in by_label
    for index, mask in enumerate(masks):
        expected = sorted((p, box) for p, box in components(mask) if p >= min_pixels)
        got = sorted((r.pixels, r.box) for r in by_label[index].regions) if index in by_label else []
        assert got == expected, f"label {index}"
    sizes = [r.pixels for label in found for r in label.regions]
    assert min(sizes) >= min_pixels
    assert any(len(label.regions) > 1 for label in found)


def test_region_centre_is_the_box_centre_in_pixel_edges():
    mask = np.zeros((10, 10), np.uint8)
    mask[2:5, 3:9] = 255
    (label,) = regions.find_regions([mask], 1)
    (region,) = label.regions
    assert region.box == (3, 2, 6, 3) and region.pixels == 18
    assert region.center == (6.0, 3.5)


def test_region_map_falls_back_to_32_bits_for_more_regions_than_16_bits_count():
    mask = np.zeros((520, 520), np.uint8)
    mask[::2, ::2] = 255                                        # 67600 isolated pixels
    (label,) = regions.find_regions([mask], 1)
    assert len(label.regions) == 260 * 260
    assert label.region_map.dtype == np.int32


def scene_boxes(encoding: str, stride: int = 2, z: np.ndarray | None = None) -> dict[str, depth.Box3D]:
    """Segment the scene with the fake model, then 3-D boxes of its regions: label -> box."""
    fake = FakeSegmenter({"threshold": 0.5})
    fake.set_vocabulary(scene.LABELS)
    result = fake.segment(scene.colour())
    masks = conversions.MaskBuffers().fill(result.probabilities, 0.5, result.present)
    found = regions.find_regions(masks, 100)
    camera = depth.PinholeCamera.from_camera_info({"k": scene.camera_matrix()})
    grid = depth.point_grid(scene.depth_fields(encoding, z), camera, MAX_DEPTH, stride,
                            expected_size=(scene.HEIGHT, scene.WIDTH))
    boxes = depth.region_boxes(grid, found)
    assert len(boxes) == 2
    return {scene.LABELS[b.label_index]: b for b in boxes}


@pytest.mark.parametrize("encoding", ["16UC1", "32FC1"])
@pytest.mark.parametrize("stride", [1, 2, 4])
def test_region_centre_within_1_cm_and_size_within_2_cm(encoding, stride):
    boxes = scene_boxes(encoding, stride)
    for name, truth in scene.truth().items():
        np.testing.assert_allclose(boxes[name].center, truth.center, atol=0.01, err_msg=f"{name} centre")
        np.testing.assert_allclose(boxes[name].size, truth.size, atol=0.02, err_msg=f"{name} size")


@pytest.mark.parametrize("encoding, invalid", [("16UC1", [0.0, 65.535, 9.0]),
                                               ("32FC1", [0.0, np.nan, np.inf, -1.0, 9.0])])
def test_invalid_depth_is_skipped(encoding, invalid):
    z = scene.depth_metres()
    rng = np.random.default_rng(0)
    holes = rng.random(z.shape) < 0.2                           # a fifth of every region
    z[holes] = rng.choice(np.array(invalid, np.float32), size=int(holes.sum()))
    boxes = scene_boxes(encoding, stride=1, z=z)
    clean = scene_boxes(encoding, stride=1)
    for name in scene.LABELS:
        np.testing.assert_allclose(boxes[name].center, clean[name].center, atol=0.01)
        np.testing.assert_allclose(boxes[name].size, clean[name].size, atol=0.02)
        assert boxes[name].points < 0.85 * clean[name].points


@pytest.mark.parametrize("columns", [37, 144, 160])
@pytest.mark.parametrize("noise", [0.0, 0.01])
def test_a_large_regions_centre_is_the_exact_median_of_its_points(columns, noise):
    """Regions of more points than the boxes' sample still get their points' own medians (what a sort puts at
    n // 2), on flat and noisy depth, for rows of lengths that a strided sample would alias with."""
    rng = np.random.default_rng(columns)
    z = (scene.depth_metres() + rng.normal(0.0, noise, (scene.HEIGHT, scene.WIDTH))).astype(np.float32)
    z[rng.random(z.shape) < 0.1] = np.nan
    mask = np.zeros((scene.HEIGHT, scene.WIDTH), np.uint8)
    mask[20:460, 100:100 + 2 * columns] = 255
    mask[300:310, 0:90] = 255                                   # a second region, so the mask is labelled
    camera = depth.PinholeCamera.from_camera_info({"k": scene.camera_matrix()})
    grid = depth.point_grid(scene.depth_fields("32FC1", z), camera, MAX_DEPTH, 2)
    labels = regions.find_regions([mask], 100)
    boxes = depth.region_boxes(grid, labels)
    assert len(boxes) == 2 and boxes[0].points > 5000
    for label in labels:
        for region, box in zip(label.regions, boxes):
            inside = label.inside(region.region_id, grid.sample) & grid.valid
            points = np.sort(np.stack([plane[inside] for plane in grid.xyz]), axis=1)
            np.testing.assert_array_equal(box.center, points[:, points.shape[1] // 2])
    assert all(np.array_equal(a.center, b.center) and np.array_equal(a.size, b.size)
               for a, b in zip(boxes, depth.region_boxes(grid, labels)))      # the same again: deterministic


def test_background_pixels_inside_a_mask_do_not_stretch_its_size():
    """A mask that spills over the box's edge onto the wall: the spilled points are outliers in depth."""
    z = scene.depth_metres()
    z[scene.BOX_ROWS[0]:scene.BOX_ROWS[1], scene.BOX_COLUMNS[0]:scene.BOX_COLUMNS[0] + 8] = scene.WALL_Z
    box = scene_boxes("32FC1", stride=1, z=z)["box"]
    truth = scene.truth()["box"]
    np.testing.assert_allclose(box.size[2], 0.0, atol=0.02)
    assert box.size[0] < truth.size[0]                          # the spilled columns are not counted


def test_mismatched_depth_size_and_bad_camera_info_are_errors_with_a_reason():
    camera = depth.PinholeCamera.from_camera_info({"k": scene.camera_matrix()})
    with pytest.raises(depth.DepthError, match="registered to the colour image"):
        depth.point_grid(scene.depth_fields("16UC1"), camera, MAX_DEPTH, 1, expected_size=(240, 320))
    with pytest.raises(depth.DepthError, match="unsupported depth encoding 'rgb8'"):
        depth.point_grid({**scene.depth_fields("16UC1"), "encoding": "rgb8"}, camera, MAX_DEPTH, 1)
    with pytest.raises(depth.DepthError, match="does not match"):
        depth.point_grid({**scene.depth_fields("16UC1"), "data": b"\0" * 10}, camera, MAX_DEPTH, 1)
    with pytest.raises(depth.DepthError, match="camera matrix"):
        depth.PinholeCamera.from_camera_info({"k": [0.0] * 9})


def test_big_endian_and_padded_rows_read_the_same():
    camera = depth.PinholeCamera.from_camera_info({"k": scene.camera_matrix()})
    z = scene.depth_metres()
    values = (z * 1000).astype(">u2")
    padded = np.zeros((scene.HEIGHT, scene.WIDTH + 3), ">u2")
    padded[:, :scene.WIDTH] = values
    fields = {"height": scene.HEIGHT, "width": scene.WIDTH, "encoding": "16UC1", "is_bigendian": 1,
              "step": padded.shape[1] * 2, "data": padded.tobytes()}
    grid = depth.point_grid(fields, camera, MAX_DEPTH, 3)
    reference = depth.point_grid(scene.depth_fields("16UC1"), camera, MAX_DEPTH, 3)
    np.testing.assert_array_equal(grid.xyz, reference.xyz)


def test_labelled_cloud_holds_the_masked_valid_points_with_their_label_index():
    fake = FakeSegmenter({"threshold": 0.5})
    fake.set_vocabulary(["box", "wall", "sky"])                 # sky: the blue channel, absent
    result = fake.segment(scene.colour())
    z = scene.depth_metres()
    z[:10] = np.nan                                             # the top rows have no depth: 5 of the grid's
    camera = depth.PinholeCamera.from_camera_info({"k": scene.camera_matrix()})
    grid = depth.point_grid(scene.depth_fields("32FC1", z), camera, MAX_DEPTH, 2)
    masks = [grid.sample(m) for m in conversions.MaskBuffers().fill(result.probabilities, 0.5, result.present)]
    label_map = rendering.label_image(grid.sample(result.probabilities), masks)
    points = depth.labelled_points(grid, label_map)
    assert points.dtype == depth.CLOUD_DTYPE
    assert len(points) == (scene.HEIGHT // 2 - 5) * (scene.WIDTH // 2)
    box = points[points["label"] == 0]
    wall = points[points["label"] == 1]
    assert len(box) + len(wall) == len(points)
    np.testing.assert_allclose(box["z"], scene.BOX_Z)
    np.testing.assert_allclose(wall["z"], scene.WALL_Z)
    box_rows = (scene.BOX_ROWS[1] - scene.BOX_ROWS[0]) // 2
    box_columns = (scene.BOX_COLUMNS[1] - scene.BOX_COLUMNS[0] + 1) // 2     # the even columns of 215..424
    assert len(box) == box_rows * box_columns


# --- compressed images -----------------------------------------------------------------------------------------

def textured_scene() -> np.ndarray:
    """The scene's colours shaded smoothly between 50% and 100%, so that pixels cross the fake model's threshold
    (50%) inside the regions too, not only at their edges. (JPEG's 4:2:0 chroma subsampling moves a mask most at
    a saturated red edge: with the red shaded down to 10% instead, the red mask's IoU at quality 90 is 0.976.)"""
    rgb = scene.colour().astype(np.float32)
    yy, xx = np.mgrid[0:scene.HEIGHT, 0:scene.WIDTH]
    shade = 0.75 + 0.25 * np.sin(xx / 37.0) * np.cos(yy / 53.0)
    return (rgb * shade[..., None]).clip(0, 255).astype(np.uint8)


def fake_masks(rgb: np.ndarray) -> np.ndarray:
    fake = FakeSegmenter({"threshold": 0.5})
    fake.set_vocabulary(["red", "green", "blue"])
    return np.stack(conversions.MaskBuffers().fill(fake.segment(rgb).probabilities, 0.5, [True] * 3)) > 0


def encode(rgb: np.ndarray, ext: str, *params: int) -> bytes:
    ok, data = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), list(params))
    assert ok
    return data.tobytes()


def test_png_decodes_to_the_raw_image_and_the_same_masks():
    rgb = textured_scene()
    decoded = conversions.compressed_to_rgb(encode(rgb, ".png"))
    np.testing.assert_array_equal(decoded, rgb)
    np.testing.assert_array_equal(fake_masks(decoded), fake_masks(rgb))


def test_jpeg_quality_90_gives_masks_of_iou_at_least_098():
    rgb = textured_scene()
    decoded = conversions.compressed_to_rgb(encode(rgb, ".jpg", cv2.IMWRITE_JPEG_QUALITY, 90))
    assert decoded.shape == rgb.shape
    jpeg, raw = fake_masks(decoded), fake_masks(rgb)
    for k in range(2):                                          # red and green are present
        iou = (jpeg[k] & raw[k]).sum() / (jpeg[k] | raw[k]).sum()
        assert iou >= 0.98, f"label {k}: IoU {iou:.4f}"
    assert (jpeg[0] != raw[0]).any() or (jpeg[1] != raw[1]).any()   # JPEG is lossy: not trivially equal


@pytest.mark.parametrize("payload, reason", [
    (lambda jpg, png: jpg[: len(jpg) // 2], "corrupt or truncated JPEG"),
    (lambda jpg, png: jpg[:40], "truncated JPEG"),
    (lambda jpg, png: png[: len(png) // 2], "corrupt or truncated PNG"),
    (lambda jpg, png: png[:12], "truncated PNG"),
    (lambda jpg, png: b"", "neither JPEG nor PNG"),
    (lambda jpg, png: b"GIF89a" + jpg, "neither JPEG nor PNG"),
    (lambda jpg, png: jpg[:300] + bytes(len(jpg) - 300), "corrupt or truncated JPEG"),
])
def test_corrupt_payloads_are_rejected_with_a_reason(payload, reason):
    rgb = textured_scene()[:64, :80]
    data = payload(encode(rgb, ".jpg"), encode(rgb, ".png"))
    with pytest.raises(conversions.ImageFormatError, match=reason):
        conversions.compressed_to_rgb(data)


def test_compressed_size_is_read_before_decoding_and_limited():
    rgb = textured_scene()[:48, :64]
    for ext in (".jpg", ".png"):
        data = encode(rgb, ext)
        assert conversions.compressed_size(data)[1:] == (64, 48)
        with pytest.raises(conversions.ImageFormatError, match="exceeds the limit of 1000 pixels"):
            conversions.compressed_to_rgb(data, max_pixels=1000)
