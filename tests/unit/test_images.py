import numpy as np
import pytest

from yolo_compile import images


@pytest.mark.parametrize("shape", [(960, 1280), (720, 1280), (480, 480), (100, 333)])
def test_letterbox_matches_ultralytics(shape):
    from ultralytics.data.augment import LetterBox

    img = np.random.default_rng(0).integers(0, 255, (*shape, 3), dtype=np.uint8)
    ours = images.letterbox(img, 640)
    theirs = LetterBox(new_shape=(640, 640), auto=False, scale_fill=False, scaleup=True, center=True)(image=img)
    assert ours.shape == theirs.shape == (640, 640, 3)
    assert np.array_equal(ours, theirs)


def test_to_tensor_is_rgb_nchw_in_unit_range():
    img = np.zeros((32, 64, 3), np.uint8)
    img[..., 0] = 255  # blue in BGR
    t = images.to_tensor(img, 64)
    assert t.shape == (3, 64, 64) and t.dtype == np.float32
    assert t[2, 32, 10] == 1.0 and t[0, 32, 10] == 0.0  # blue lands in the last RGB channel
    assert t[0, 0, 0] == pytest.approx(114 / 255)  # padding


def test_list_images_filters_and_sorts(tmp_path):
    for name in ("b.JPG", "a.png", "notes.txt", "sub/c.tif"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert [p.relative_to(tmp_path).as_posix() for p in images.list_images(tmp_path)] == ["a.png", "b.JPG", "sub/c.tif"]


def test_unreadable_image_names_the_file(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="broken.jpg: not an image"):
        images.read_bgr(bad)
