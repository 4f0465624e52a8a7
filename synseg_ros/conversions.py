"""sensor_msgs/Image and CompressedImage fields <-> numpy arrays, without ROS.

Functions here take and return plain values (an object with the Image fields ``height``, ``width``,
``encoding``, ``is_bigendian``, ``step``, ``data``, or a dict of them; a CompressedImage's ``data``), so they are
tested without rclpy and shared by the node, the camera-source node, the bag tool and the tests. Every malformed
input raises ``ImageFormatError`` with a reason; none can crash the caller with anything else.
"""
from __future__ import annotations

import array
import struct
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import cv2
import numpy as np

__all__ = ["ImageFormatError", "MaskBuffers", "SUPPORTED_ENCODINGS", "image_to_rgb", "rgb_to_image_fields",
           "mono8_fields", "check_image_layout", "compressed_to_rgb", "compressed_size"]


class ImageFormatError(ValueError):
    """An image message that cannot be decoded; the message says why."""


@dataclass(frozen=True)
class _Encoding:
    channels: int                                   # bytes per pixel (all supported encodings are 8 bit)
    to_rgb: Callable[[np.ndarray], np.ndarray]      # (H, W, channels) or (H, W) uint8 -> (H, W, 3) uint8
    from_rgb: Callable[[np.ndarray], np.ndarray]    # (H, W, 3) uint8 -> (H, W, channels) or (H, W) uint8


def _cvt(code: int) -> Callable[[np.ndarray], np.ndarray]:
    return lambda array: cv2.cvtColor(array, code)


# ROS names (sensor_msgs/image_encodings.hpp): "yuv422" is UYVY byte order and "yuv422_yuy2" is YUYV;
# newer distributions also name them "uyvy" and "yuyv".
_UYVY = _Encoding(2, _cvt(cv2.COLOR_YUV2RGB_UYVY), _cvt(cv2.COLOR_RGB2YUV_UYVY))
_YUYV = _Encoding(2, _cvt(cv2.COLOR_YUV2RGB_YUYV), _cvt(cv2.COLOR_RGB2YUV_YUYV))
_ENCODINGS: dict[str, _Encoding] = {
    "rgb8": _Encoding(3, lambda a: a, lambda a: a),
    "bgr8": _Encoding(3, _cvt(cv2.COLOR_BGR2RGB), _cvt(cv2.COLOR_RGB2BGR)),
    "rgba8": _Encoding(4, _cvt(cv2.COLOR_RGBA2RGB), _cvt(cv2.COLOR_RGB2RGBA)),
    "bgra8": _Encoding(4, _cvt(cv2.COLOR_BGRA2RGB), _cvt(cv2.COLOR_RGB2BGRA)),
    "mono8": _Encoding(1, _cvt(cv2.COLOR_GRAY2RGB), _cvt(cv2.COLOR_RGB2GRAY)),
    "yuv422": _UYVY,
    "uyvy": _UYVY,
    "yuv422_yuy2": _YUYV,
    "yuyv": _YUYV,
}
SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(_ENCODINGS)
_PACKED_422 = (_UYVY, _YUYV)


def _field(image: Any, name: str) -> Any:
    return image[name] if isinstance(image, dict) else getattr(image, name)


def check_image_layout(height: int, width: int, encoding: str, step: int, data_size: int,
                       max_pixels: int | None = None) -> _Encoding:
    """Validate the declared layout of an image against its data; returns the encoding's description.

    Raises:
        ImageFormatError: unsupported encoding, zero or oversized dimensions, a step shorter than a row,
            odd width for a 4:2:2 encoding, or a data size that does not match ``step * height``.
    """
    codec = _ENCODINGS.get(encoding)
    if codec is None:
        raise ImageFormatError(f"unsupported encoding {encoding!r} (supported: {', '.join(SUPPORTED_ENCODINGS)})")
    if height <= 0 or width <= 0:
        raise ImageFormatError(f"empty image: {width}x{height}")
    if max_pixels is not None and height * width > max_pixels:
        raise ImageFormatError(f"image of {width}x{height} pixels exceeds the limit of {max_pixels} pixels")
    if codec in _PACKED_422 and width % 2:
        raise ImageFormatError(f"{encoding} needs an even width, got {width}")
    row = width * codec.channels
    if step < row:
        raise ImageFormatError(f"step {step} is shorter than one row of {width} {encoding} pixels ({row} bytes)")
    if data_size != step * height:
        raise ImageFormatError(f"data has {data_size} bytes, expected step * height = {step} * {height}"
                               f" = {step * height}")
    return codec


def image_to_rgb(image: Any, max_pixels: int | None = None) -> np.ndarray:
    """Decode a sensor_msgs/Image (or an object/dict with its fields) into RGB.

    Args:
        image: has ``height``, ``width``, ``encoding``, ``step``, ``data`` (bytes-like); ``is_bigendian`` is
            irrelevant for 8-bit encodings.
        max_pixels: reject images with more pixels than this (None: no limit).

    Returns:
        (H, W, 3) uint8 RGB array (a new array, or a view of ``data`` for rgb8 with no row padding).

    Raises:
        ImageFormatError: see ``check_image_layout``.
    """
    height, width, step = int(_field(image, "height")), int(_field(image, "width")), int(_field(image, "step"))
    encoding = str(_field(image, "encoding"))
    data = _field(image, "data")
    buffer = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.view(np.uint8)
    codec = check_image_layout(height, width, encoding, step, buffer.size, max_pixels)
    rows = buffer.reshape(height, step)[:, : width * codec.channels]
    pixels = rows.reshape(height, width) if codec.channels == 1 else rows.reshape(height, width, codec.channels)
    return codec.to_rgb(pixels)


# A corrupt payload is reported once by ImageFormatError (throttled in the node); OpenCV's decoders would also
# print their own warning for every such frame.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
# The signatures that start a payload of image_transport's "compressed" transport.
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8\xff"
# JPEG start-of-frame markers (SOF0..SOF15 but DHT, JPG and DAC) carry the image size.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_NO_LENGTH = frozenset(range(0xD0, 0xDA)) | {0x01}       # RSTn, SOI, EOI, TEM: markers without a length


def compressed_size(data: bytes | np.ndarray) -> tuple[str, int, int]:
    """The format ("jpeg" or "png") and the width and height a payload declares, read from its header.

    Raises:
        ImageFormatError: neither JPEG nor PNG, or a header cut short.
    """
    view = memoryview(data).cast("B")       # bytes, array.array('B') (rclpy) and uint8 arrays (rosbags) alike
    head = bytes(view[:8])
    if head.startswith(_PNG_SIGNATURE):
        header = bytes(view[8:24])
        if len(header) < 16 or header[4:8] != b"IHDR":
            raise ImageFormatError("truncated PNG: no image header (IHDR)")
        width, height = struct.unpack(">II", header[8:16])
        return "png", width, height
    if not head.startswith(_JPEG_SIGNATURE):
        raise ImageFormatError(f"neither JPEG nor PNG (or cut short): the payload starts with {head.hex(' ')!r}")
    pos = 2
    while pos + 4 <= len(view):
        if view[pos] != 0xFF:
            raise ImageFormatError(f"corrupt JPEG: no marker at byte {pos}")
        marker = view[pos + 1]
        if marker == 0xFF:              # fill byte
            pos += 1
            continue
        if marker in _JPEG_NO_LENGTH:
            pos += 2
            continue
        length = (view[pos + 2] << 8) | view[pos + 3]
        if marker in _JPEG_SOF:
            if pos + 9 > len(view):
                break
            height, width = struct.unpack(">HH", view[pos + 5:pos + 9])
            return "jpeg", width, height
        pos += 2 + length
    raise ImageFormatError("truncated JPEG: no frame header (SOF) before the end of the data")


def compressed_to_rgb(data: bytes | np.ndarray, max_pixels: int | None = None) -> np.ndarray:
    """Decode a sensor_msgs/CompressedImage payload (JPEG or PNG, as image_transport's "compressed" sends it).

    The codec is told by the payload's signature, not by the message's ``format`` text, which drivers fill
    differently ("jpeg", "rgb8; jpeg compressed bgr8", ...).

    Args:
        data: the message's ``data`` (bytes-like or uint8 array).
        max_pixels: reject images declaring more pixels than this, before decoding (None: no limit).

    Returns:
        (H, W, 3) uint8 RGB.

    Raises:
        ImageFormatError: not JPEG or PNG, an empty or oversized image, or a corrupt or truncated payload.
    """
    kind, width, height = compressed_size(data)
    if width <= 0 or height <= 0:
        raise ImageFormatError(f"empty {kind.upper()} image: {width}x{height}")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageFormatError(f"image of {width}x{height} pixels exceeds the limit of {max_pixels} pixels")
    buffer = np.frombuffer(data, np.uint8)
    rgb = cv2.imdecode(buffer, cv2.IMREAD_COLOR_RGB)
    if rgb is None:
        raise ImageFormatError(f"corrupt or truncated {kind.upper()} payload of {buffer.size} bytes "
                               f"({width}x{height} declared): it does not decode")
    return rgb


def rgb_to_image_fields(rgb: np.ndarray, encoding: str = "rgb8") -> dict[str, Any]:
    """Encode an RGB array as the fields of a sensor_msgs/Image (no header).

    Args:
        rgb: (H, W, 3) uint8.
        encoding: one of ``SUPPORTED_ENCODINGS``.

    Returns:
        dict with ``height``, ``width``, ``encoding``, ``is_bigendian``, ``step`` and ``data`` (bytes).
    """
    codec = _ENCODINGS.get(encoding)
    if codec is None:
        raise ImageFormatError(f"unsupported encoding {encoding!r} (supported: {', '.join(SUPPORTED_ENCODINGS)})")
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageFormatError(f"expected an (H, W, 3) uint8 array, got {rgb.shape} {rgb.dtype}")
    encoded = np.ascontiguousarray(codec.from_rgb(np.ascontiguousarray(rgb)))
    height, width = rgb.shape[:2]
    return {"height": height, "width": width, "encoding": encoding, "is_bigendian": 0,
            "step": width * codec.channels, "data": encoded.tobytes()}


def mono8_fields(array: np.ndarray) -> dict[str, Any]:
    """The fields of a mono8 sensor_msgs/Image holding a (H, W) uint8 or bool array (bool -> 0/255)."""
    if array.ndim != 2:
        raise ImageFormatError(f"expected an (H, W) array, got shape {array.shape}")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * np.uint8(255)
    elif array.dtype != np.uint8:
        raise ImageFormatError(f"expected a uint8 or bool array, got {array.dtype}")
    height, width = array.shape
    return {"height": height, "width": width, "encoding": "mono8", "is_bigendian": 0, "step": width,
            "data": np.ascontiguousarray(array).tobytes()}


class MaskBuffers:
    """mono8 masks (0 or 255) thresholded from activation maps into buffers that are reused frame after frame.

    Each buffer is an ``array.array('B')``, the type a sensor_msgs/Image keeps its ``data`` in, so a message
    can hold it as it is, and the threshold writes into it through a numpy view: one pass over each map and
    no copy, where building masks as numpy arrays and then bytes takes four. A buffer is written again only
    by the next ``fill``, after the message holding it was published (rclpy copies it out at publish).
    """

    def __init__(self) -> None:
        self.arrays: list[array.array] = []
        self.views: list[np.ndarray] = []
        self.shape: tuple[int, int] = (0, 0)

    def fill(self, probabilities: np.ndarray, threshold: float, present: Sequence[bool]) -> list[np.ndarray]:
        """Threshold K maps: 255 where a present label's map is above ``threshold``, else 0.

        Args:
            probabilities: (K, H, W) float32 (or float64) activation maps.
            threshold: the level a pixel must exceed to be in a mask.
            present: (K,) whether each label gets a mask at all (``synseg_model.masks``).

        Returns:
            K (H, W) uint8 views of ``arrays``.
        """
        count, height, width = probabilities.shape
        if len(self.arrays) != count or self.shape != (height, width):
            self.arrays = [array.array("B", bytes(height * width)) for _ in range(count)]
            self.views = [np.frombuffer(buffer, np.uint8).reshape(height, width) for buffer in self.arrays]
            self.shape = (height, width)
        for activation, view, there in zip(probabilities, self.views, present):
            if there:
                cv2.compare(np.ascontiguousarray(activation), float(threshold), cv2.CMP_GT, dst=view)
            else:
                view.fill(0)
        return self.views
