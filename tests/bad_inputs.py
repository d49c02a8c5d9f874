"""A generated corpus of bad and awkward inputs, each with the outcome a user should get.

Every file a user hands to ``mula`` is here in its damaged or unusual forms: pictures (for
``mula predict <folder>``), videos (``mula predict clip --vis out.mp4 --pose out.jsonl``), weights files
(``mula predict --weights`` and ``mula evaluate``), data caches (``mula train --data`` and
``mula evaluate --data``) and training config files (``mula train --config``). Each entry states one
outcome:

- ``processed``: exit 0, the outputs written and right (an EXIF-rotated picture's outputs have the
  upright size, a 1x1 video's records say 1x1);
- ``skipped``: in a call over many inputs (a folder of pictures), the entry is named with its reason,
  the others are still processed, and the call exits 1;
- ``refused``: one line naming the file and what to do, exit code 2.

No outcome ever shows a traceback. ``tests/test_bad_inputs.py`` feeds each entry to its command and
checks the outcome; a benchmark or a fuzzing script can reuse the same files::

    from bad_inputs import write_corpus        # with tests/ on sys.path (or: from tests.bad_inputs ...)
    for entry in write_corpus(Path("/tmp/corpus")):
        print(entry.kind, entry.name, entry.outcome, entry.description)

Everything is generated (no downloads): the whole corpus takes a few seconds and about 15 MB on disk,
mostly copies of a 1.4 MB data cache and a 0.4 MB weights file (the decompression bomb is a 24 KB PNG).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

try:  # tests/ is on sys.path under pytest (conftest); a script may import this as tests.bad_inputs
    from videos import frame_image, write_video

    from trees import build_lip_cache
except ImportError:  # pragma: no cover - depends on how the caller imports this module
    from tests.trees import build_lip_cache
    from tests.videos import frame_image, write_video

PICTURE, VIDEO, WEIGHTS, CACHE, CONFIG = "picture", "video", "weights", "cache", "config"
KINDS = (PICTURE, VIDEO, WEIGHTS, CACHE, CONFIG)
PROCESSED, SKIPPED, REFUSED = "processed", "skipped", "refused"
OUTCOMES = (PROCESSED, SKIPPED, REFUSED)

# The commands an entry is fed to (see tests/test_bad_inputs.py for the exact command lines).
PREDICT_FOLDER = "predict-folder"  # mula predict <pictures folder> --out-dir OUT
PREDICT_VIDEO = "predict-video"  # mula predict <video> --vis out.mp4 --pose out.jsonl
PREDICT = "predict"  # mula predict good.jpg --weights <entry> --out labels.png
EVALUATE = "evaluate"  # mula evaluate <weights entry> --data C; mula evaluate W --data <cache entry>
TRAIN = "train"  # mula train --data <cache entry> <tiny recipe>; mula train --config <config entry> --data C

# A training run that takes a few seconds on a CPU, as flags and as config-file lines.
TINY_RECIPE = {"model": "hg-tiny", "width": 8, "input-size": 64, "batch-size": 2, "epochs": 1, "workers": 0}
TINY_TRAIN_FLAGS = tuple(str(x) for key, value in TINY_RECIPE.items() for x in (f"--{key}", value))
_TINY_TOML = "".join(f"{k} = {json.dumps(v)}\n" for k, v in TINY_RECIPE.items())

_STORED = (40, 30)  # width, height of the EXIF-rotated pictures as stored
_UPRIGHT = {o: _STORED if o < 5 else _STORED[::-1] for o in range(1, 9)}  # 5-8 turn the picture a quarter
_PLAIN = {"size": _STORED}  # the facts of a processed 40x30 picture


@dataclass(frozen=True)
class BadInput:
    """One corpus entry: a file (or folder) and what the user should get from it.

    Attributes:
        name: the file name (unique within its kind).
        kind: picture, video, weights, cache or config.
        path: where :func:`write_corpus` wrote it.
        outcome: processed, skipped or refused.
        description: what is wrong or unusual with it.
        commands: the commands it is fed to (PREDICT_FOLDER, PREDICT_VIDEO, PREDICT, EVALUATE, TRAIN).
        says: a phrase the skip or refusal message contains (besides the file's name).
        size: processed pictures: the (width, height) a viewer shows, which every output has;
            processed videos: the (width, height) of the first frame, which the overlay video keeps.
        sizes: processed videos whose frames change size: every size, in order (default: just ``size``).
        frames: processed videos: how many frames are predicted.
        marker: a file that must never be created (a pickle that would run code creates it).
        partial: refused videos: every frame decoded before the damage is predicted and written (the
            error line says how many were decoded).
    """

    name: str
    kind: str
    path: Path
    outcome: str
    description: str
    commands: tuple[str, ...] = ()
    says: str | None = None
    size: tuple[int, int] | None = None
    sizes: tuple[tuple[int, int], ...] | None = None
    frames: int | None = None
    marker: Path | None = None
    partial: bool = False


@dataclass
class _Context:
    """What entries are made from: a good weights file and a good data cache, built once on demand."""

    folder: Path
    weights_file: Path | None = None
    cache_file: Path | None = None

    def weights(self) -> Path:
        if self.weights_file is None:
            self.weights_file = _tiny_weights(self.folder / "_base" / "tiny.pt")
        return self.weights_file

    def payload(self) -> dict[str, Any]:
        import torch

        return torch.load(self.weights(), map_location="cpu", weights_only=True)

    def cache(self) -> Path:
        if self.cache_file is None:
            root = self.folder / "_base" / "data"
            root.mkdir(parents=True, exist_ok=True)
            self.cache_file = build_lip_cache(root, {"train": 2, "val": 2}, seed=5)
        return self.cache_file


@dataclass(frozen=True)
class Spec:
    """An entry before it is written: :func:`write_corpus` turns it into a :class:`BadInput`."""

    name: str
    kind: str
    outcome: str
    description: str
    write: Callable[[Path, _Context], Any]  # writes the entry at the path; may return more facts (a dict)
    facts: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# encoders


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(name.encode()))


def _noise(name: str, width: int, height: int, channels: int = 3) -> np.ndarray:
    shape = (height, width, channels) if channels > 1 else (height, width)
    return _rng(name).integers(0, 256, shape, dtype=np.uint8)


def _encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


def _rgb(name: str, width: int = 40, height: int = 30) -> Image.Image:
    return Image.fromarray(_noise(name, width, height))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_chunks(data: bytes) -> list[tuple[int, int, bytes]]:
    """(offset, data length, type) of every chunk of a PNG."""
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        chunks.append((pos, length, data[pos + 4:pos + 8]))
        pos += 12 + length
    return chunks


def _png(name: str) -> bytes:
    return _encode(_rgb(name), "PNG")


def _with_ihdr_size(data: bytes, width: int, height: int) -> bytes:
    """The PNG with its header claiming another size (checksum fixed, so only the size is a lie)."""
    out = bytearray(data)
    out[16:24] = struct.pack(">II", width, height)
    out[29:33] = struct.pack(">I", zlib.crc32(bytes(out[12:29])))
    return bytes(out)


def _bad_crc(data: bytes, chunk: bytes) -> bytes:
    out = bytearray(data)
    pos, length, _ = next(c for c in _png_chunks(data) if c[2] == chunk)
    out[pos + 8 + length] ^= 0xFF
    return bytes(out)


def _damaged_zlib(data: bytes) -> bytes:
    """Bytes in the middle of the compressed pixels overwritten; the chunk's checksum recomputed to match."""
    out = bytearray(data)
    pos, length, _ = next(c for c in _png_chunks(data) if c[2] == b"IDAT")
    start = pos + 8 + length // 2
    out[start:start + 16] = b"\xff" * 16
    crc = zlib.crc32(bytes(out[pos + 4:pos + 8 + length]))
    out[pos + 8 + length:pos + 12 + length] = struct.pack(">I", crc)
    return bytes(out)


def _without_idat(data: bytes) -> bytes:
    return b"".join([data[:8]] + [data[p:p + 12 + n] for p, n, kind in _png_chunks(data) if kind != b"IDAT"])


def _png_bomb(side: int = 14_000) -> bytes:
    """A real, valid black 1-bit PNG of side x side pixels (196 M: over twice Pillow's MAX_IMAGE_PIXELS),
    compressed row by row so that it never exists uncompressed."""
    row = bytes(1 + (side + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row * 500) for _ in range(side // 500))
    idat += compressor.compress(row * (side % 500)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    chunks = _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def _exif_jpeg(name: str, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _encode(_rgb(name, *_STORED), "JPEG", quality=90, exif=exif)


def _png_exif_after_pixels(name: str, orientation: int) -> bytes:
    """A PNG whose orientation sits in an eXIf chunk after the pixels (Pillow decodes them to find it)."""
    data = _encode(_rgb(name, *_STORED), "PNG")
    exif = Image.Exif()
    exif[0x0112] = orientation
    raw = exif.tobytes()
    raw = raw[6:] if raw.startswith(b"Exif\x00\x00") else raw
    iend = data.rindex(b"IEND") - 4
    return data[:iend] + _png_chunk(b"eXIf", raw) + data[iend:]


def _corrupt_exif_jpeg(name: str) -> bytes:
    """A JPEG whose EXIF block (APP1) holds a TIFF header followed by garbage."""
    data = _encode(_rgb(name), "JPEG", quality=90)
    body = b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\xff\x13" + bytes(range(60))
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + data[2:]


def _frames(name: str, count: int = 3, width: int = 40, height: int = 30) -> list[Image.Image]:
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]
    frames = []
    for i in range(count):
        pixels = np.full((height, width, 3), colours[i % len(colours)], np.uint8)
        pixels[: height // 2, : width // 2] = _noise(f"{name}{i}", width // 2, height // 2)
        frames.append(Image.fromarray(pixels))
    return frames


def _animated(name: str, fmt: str) -> bytes:
    first, *rest = _frames(name)
    return _encode(first, fmt, save_all=True, append_images=rest, duration=100, loop=0)


def _cut(data: bytes, fraction: float) -> bytes:
    return data[: int(len(data) * fraction)]


def _heic_like() -> bytes:
    """The start of an iPhone HEIC photo (ISO-BMFF ``ftyp heic`` box): Pillow has no HEIC decoder."""
    ftyp = b"ftypheic" + b"\x00\x00\x00\x00" + b"mif1heic"
    rest = _rng("heic").integers(0, 256, 400, dtype=np.uint8).tobytes()
    return struct.pack(">I", len(ftyp) + 4) + ftyp + rest


def _write(data: bytes | str) -> Callable[[Path, _Context], None]:
    def write(path: Path, _: _Context) -> None:
        path.write_bytes(data.encode() if isinstance(data, str) else data)

    return write


def _save(make: Callable[[], Image.Image], fmt: str, **options: Any) -> Callable[[Path, _Context], None]:
    def write(path: Path, _: _Context) -> None:
        make().save(path, format=fmt, **options)

    return write


def _bytes(make: Callable[[], bytes]) -> Callable[[Path, _Context], None]:
    def write(path: Path, _: _Context) -> None:
        path.write_bytes(make())

    return write


def _broken_link(path: Path, _: _Context) -> None:
    os.symlink(path.with_name("moved_away.jpg"), path)


def _avif_supported() -> bool:
    from PIL import features

    return bool(features.check("avif"))


def _picture_specs() -> list[Spec]:
    p = PICTURE
    specs = [
        Spec("good_photo.jpg", p, PROCESSED, "an ordinary RGB JPEG (the control)",
             _save(lambda: _rgb("good1", 64, 48), "JPEG", quality=90), {"size": (64, 48)}),
        Spec("good_scan.png", p, PROCESSED, "an ordinary RGB PNG (the control)",
             _bytes(lambda: _encode(_rgb("good2", 36, 52), "PNG")), {"size": (36, 52)}),
        Spec("truncated_jpeg.jpg", p, SKIPPED, "a JPEG cut at 60% (an interrupted download)",
             _bytes(lambda: _cut(_encode(_rgb("tj", 64, 48), "JPEG", quality=95), 0.6)), {"says": "damaged"}),
        Spec("truncated_png.png", p, SKIPPED, "a PNG cut at 60%: the pixel data ends early",
             _bytes(lambda: _cut(_png("tp"), 0.6)), {"says": "truncated"}),
        Spec("bad_crc_header.png", p, SKIPPED, "a PNG whose header chunk fails its CRC",
             _bytes(lambda: _bad_crc(_png("bch"), b"IHDR"))),
        Spec("bad_crc_pixels.png", p, PROCESSED,
             "a PNG whose pixel chunk's CRC is wrong but whose pixels are intact (decoders, Pillow's too, "
             "do not check it)", _bytes(lambda: _bad_crc(_png("bcp"), b"IDAT")), _PLAIN),
        Spec("damaged_zlib.png", p, SKIPPED,
             "a PNG whose compressed pixel stream is overwritten mid-way (CRC fixed)",
             _bytes(lambda: _damaged_zlib(_png("dz"))), {"says": "damaged"}),
        Spec("header_claims_9000x9000.png", p, SKIPPED,
             "a 40x30 PNG whose header claims 9000x9000 (under Pillow's pixel limit): the data runs out",
             _bytes(lambda: _with_ihdr_size(_png("h9"), 9000, 9000)), {"says": "truncated"}),
        Spec("header_claims_huge.png", p, SKIPPED,
             "a 40x30 PNG whose header claims 100000x100000 (over Pillow's decompression-bomb limit)",
             _bytes(lambda: _with_ihdr_size(_png("hh"), 100_000, 100_000)), {"says": "decompression bomb"}),
        Spec("no_pixel_data.png", p, SKIPPED, "a PNG with a header and an end but no pixel chunk",
             _bytes(lambda: _without_idat(_png("np")))),
        Spec("truncated_webp.webp", p, SKIPPED, "a WebP cut at 60%",
             _bytes(lambda: _cut(_encode(_rgb("tw", 64, 48), "WEBP", quality=90), 0.6))),
        Spec("zero_bytes.jpg", p, SKIPPED, "an empty file with a picture's name", _write(b"")),
        Spec("text_file.jpg", p, SKIPPED, "a text file named .jpg",
             _write("these are my holiday notes, not a photo\n")),
        Spec("notes [draft].jpg", p, SKIPPED,
             "a text file whose name holds [brackets] (the console's markup must not eat or choke on them)",
             _write("draft notes\n")),
        Spec("heic_photo.heic", p, SKIPPED,
             "an iPhone HEIC photo (its ISO-BMFF start): Pillow cannot decode HEIC, so it must be named, "
             "not silently left out", _bytes(_heic_like), {"says": "HEIC"}),
        Spec("broken_link.jpg", p, SKIPPED, "a symbolic link to a picture that was moved away", _broken_link,
             {"says": "symbolic link"}),
        Spec("one_pixel.png", p, PROCESSED, "a 1x1 picture",
             _save(lambda: _rgb("1px", 1, 1), "PNG"), {"size": (1, 1)}),
        Spec("decompression_bomb.png", p, SKIPPED,
             "a valid 14000x14000 1-bit PNG (24 KB on disk, 196 M pixels): over twice Pillow's "
             "MAX_IMAGE_PIXELS",
             _bytes(_png_bomb), {"says": "decompression bomb"}),
        Spec("grey_16bit.png", p, PROCESSED, "16-bit greyscale (mode I;16)",
             _save(lambda: Image.fromarray(_rng("g16").integers(0, 65535, (30, 40), dtype=np.uint16)), "PNG"),
             _PLAIN),
        Spec("bilevel.png", p, PROCESSED, "a 1-bit black-and-white picture (mode 1)",
             _save(lambda: _rgb("bl").convert("1"), "PNG"), _PLAIN),
        Spec("cmyk.jpg", p, PROCESSED, "a CMYK JPEG (print workflows)",
             _save(lambda: _rgb("cmyk").convert("CMYK"), "JPEG", quality=90), _PLAIN),
        Spec("grey_alpha.png", p, PROCESSED, "greyscale with alpha (mode LA)",
             _save(lambda: Image.fromarray(_noise("la", 40, 30, 2), mode="LA"), "PNG"), _PLAIN),
        Spec("palette_transparency.png", p, PROCESSED, "a palette PNG with a transparent colour (tRNS)",
             _save(lambda: _rgb("pt").quantize(16), "PNG", transparency=0), _PLAIN),
        Spec("float32.tif", p, PROCESSED, "a 32-bit float TIFF with values in [0, 1] (mode F)",
             _save(lambda: Image.fromarray(_rng("f32").random((30, 40), dtype=np.float32)), "TIFF"),
             _PLAIN),
        Spec("two_pages.tif", p, PROCESSED, "a two-page TIFF (the first page is predicted)",
             _save(lambda: _rgb("tp1"), "TIFF", save_all=True, append_images=[_rgb("tp2")]), _PLAIN),
        Spec("jpeg_named.png", p, PROCESSED, "JPEG bytes under a .png name",
             _bytes(lambda: _encode(_rgb("jn"), "JPEG", quality=90)), _PLAIN),
        Spec("interlaced.png", p, PROCESSED, "an Adam7-interlaced PNG",
             _save(lambda: _rgb("il"), "PNG", interlace=1), _PLAIN),
        Spec("progressive.jpg", p, PROCESSED, "a progressive JPEG",
             _save(lambda: _rgb("pj"), "JPEG", quality=90, progressive=True), _PLAIN),
        Spec("UPPER CASE.JPG", p, PROCESSED, "an upper-case suffix and a space in the name",
             _save(lambda: _rgb("uc"), "JPEG", quality=90), _PLAIN),
        Spec("été à Zürich.jpg", p, PROCESSED, "a non-ASCII name",
             _save(lambda: _rgb("na"), "JPEG", quality=90), _PLAIN),
        Spec("exif_orientation_9.jpg", p, PROCESSED, "an EXIF orientation outside 1-8 (kept as stored)",
             _bytes(lambda: _exif_jpeg("o9", 9)), {"size": _STORED}),
        Spec("corrupt_exif.jpg", p, PROCESSED, "a JPEG whose EXIF block is garbage after its TIFF header",
             _bytes(lambda: _corrupt_exif_jpeg("ce")), _PLAIN),
        Spec("png_exif_after_pixels.png", p, PROCESSED,
             "a PNG rotated by an eXIf chunk placed after the pixel data (orientation 6)",
             _bytes(lambda: _png_exif_after_pixels("pe", 6)), {"size": _UPRIGHT[6]}),
        Spec("animated.gif", p, PROCESSED, "a 3-frame animated GIF (the first frame is predicted)",
             _bytes(lambda: _animated("ag", "GIF")), _PLAIN),
        Spec("animated.webp", p, PROCESSED, "a 3-frame animated WebP (the first frame is predicted)",
             _bytes(lambda: _animated("aw", "WEBP")), _PLAIN),
        Spec("thin_4000x2.png", p, PROCESSED, "a 4000x2 strip",
             _save(lambda: _rgb("thin", 4000, 2), "PNG"), {"size": (4000, 2)}),
        Spec("tall_2x4000.png", p, PROCESSED, "a 2x4000 strip",
             _save(lambda: _rgb("tall", 2, 4000), "PNG"), {"size": (2, 4000)}),
    ]
    for o in range(1, 9):
        specs.append(Spec(f"exif_orientation_{o}.jpg", p, PROCESSED,
                          f"stored 40x30 with EXIF orientation {o}: shown {_UPRIGHT[o][0]}x{_UPRIGHT[o][1]}",
                          _bytes(lambda o=o: _exif_jpeg(f"o{o}", o)), {"size": _UPRIGHT[o]}))
    if _avif_supported():
        specs.append(Spec("photo.avif", p, PROCESSED, "an AVIF photo (phones and browsers write them)",
                          _save(lambda: _rgb("avif"), "AVIF", quality=80), _PLAIN))
    return specs


# ---------------------------------------------------------------------------------------------
# videos


def _video(frames: int = 12, size: tuple[int, int] = (64, 48),
           **options: Any) -> Callable[[Path, _Context], None]:
    def write(path: Path, _: _Context) -> None:
        write_video(path, frames=frames, size=size, **options)

    return write


def _truncated_video(path: Path, ctx: _Context) -> None:
    write_video(path, frames=40, options={"movflags": "faststart"})  # index first: the start stays readable
    path.write_bytes(_cut(path.read_bytes(), 0.6))


def _damaged_middle(path: Path, ctx: _Context) -> None:
    write_video(path, frames=30)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 200] = bytes(200)
    path.write_bytes(bytes(data))


def _audio_only(path: Path, ctx: _Context) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        for i in range(4):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 8000, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _no_frames(path: Path, ctx: _Context) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        container.start_encoding()


def _lossless(size: tuple[int, int], frames: int) -> Callable[[Path, _Context], None]:
    """FFV1 in Matroska: any frame size, odd or 1x1 (H.264 in 4:2:0 needs even sides)."""

    def write(path: Path, _: _Context) -> None:
        import av

        with av.open(str(path), "w") as container:
            stream = container.add_stream("ffv1", rate=25)
            stream.width, stream.height, stream.pix_fmt = size[0], size[1], "bgr0"
            for i in range(frames):
                if min(size) > 1:
                    image = frame_image(i, *size)
                else:
                    image = np.full((size[1], size[0], 3), 30 * i, np.uint8)
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)

    return write


def _resolution_change(path: Path, ctx: _Context) -> None:
    """Two MPEG-TS segments of different sizes end to end, as an adaptive (HLS) stream switches quality."""
    first = write_video(path.with_name("_part1.ts"), frames=6, size=(64, 48))
    second = write_video(path.with_name("_part2.ts"), frames=6, size=(80, 60))
    path.write_bytes(first.read_bytes() + second.read_bytes())
    first.unlink()
    second.unlink()


def _still_named_video(path: Path, ctx: _Context) -> None:
    Image.fromarray(frame_image(0, 64, 48)).save(path, format="JPEG", quality=90)


def _video_specs() -> list[Spec]:
    v = VIDEO
    return [
        Spec("truncated.mp4", v, REFUSED,
             "an MP4 cut at 60% (index first): the frames before the cut are kept, then one error line",
             _truncated_video, {"says": "truncated or damaged", "partial": True}),
        Spec("zero_length.mp4", v, REFUSED, "an empty file with a video's name", _write(b"")),
        Spec("text.mp4", v, REFUSED, "a text file named .mp4", _write("not a video\n")),
        Spec("audio_only.mp4", v, REFUSED, "an MP4 holding only an AAC audio track", _audio_only,
             {"says": "no video stream"}),
        Spec("no_frames.mkv", v, REFUSED, "a Matroska file with a video track and not one frame", _no_frames),
        Spec("one_pixel.mkv", v, PROCESSED, "5 frames of 1x1 pixels (FFV1)", _lossless((1, 1), 5),
             {"size": (1, 1), "frames": 5}),
        Spec("odd_size.mkv", v, PROCESSED, "6 frames of 33x17 pixels (odd sides; FFV1)",
             _lossless((33, 17), 6), {"size": (33, 17), "frames": 6}),
        Spec("damaged_middle.mp4", v, REFUSED,
             "a 30-frame MP4 with 200 bytes in its middle zeroed: the frames before are kept, then one "
             "error line",
             _damaged_middle, {"says": "damaged", "partial": True}),
        Spec("resolution_change.ts", v, PROCESSED,
             "an MPEG-TS stream that switches from 64x48 to 80x60 after 6 frames (adaptive streaming)",
             _resolution_change, {"size": (64, 48), "sizes": ((64, 48), (80, 60)), "frames": 12}),
        Spec("rotated_phone.mp4", v, PROCESSED,
             "a 64x48 video with 90-degree display rotation (a portrait phone video): frames come upright, "
             "48x64", _video(frames=4, rotation=90), {"size": (48, 64), "frames": 4}),
        Spec("still_image.mp4", v, PROCESSED,
             "a JPEG photo under an .mp4 name (FFmpeg reads it as one frame)",
             _still_named_video, {"size": (64, 48), "frames": 1}),
    ]


# ---------------------------------------------------------------------------------------------
# weights


def _tiny_weights(path: Path, manifest_name: str = "lip", width: int = 16, classes: list[str] | None = None,
                  renamed: str | None = None) -> Path:
    """An untrained hg-tiny for a dataset (``classes`` and ``renamed``: a made-up one on its base), with BN
    statistics that keep activations in range."""
    import torch

    from mula_cli.model.presets import build_model
    from mula_cli.model.weights import save_weights
    from mula_cli.utils.manifests import load_manifest

    manifest = load_manifest(manifest_name)
    doc = json.loads(manifest.to_json())
    if classes is not None:
        doc["classes"] = classes
    if renamed is not None:
        doc["name"] = renamed
    torch.manual_seed(0)
    model = build_model("hg-tiny", num_classes=len(doc["classes"]), num_joints=manifest.num_joints,
                        width=width, class_names=tuple(doc["classes"]), joint_names=manifest.joints)
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) * 1.5 + 0.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_weights(path, model, extra={"manifest": json.dumps(doc)})
    return path


class _RunsCode:
    """Unpickling this creates ``marker``: what a malicious checkpoint would do (with worse code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _torch_save(make: Callable[[_Context, Path], Any]) -> Callable[[Path, _Context], Any]:
    def write(path: Path, ctx: _Context) -> Any:
        import torch

        torch.save(make(ctx, path), path)

    return write


def _code_pickle_in_weights(path: Path, ctx: _Context) -> dict[str, Any]:
    import torch

    marker = path.with_suffix(".marker")
    payload = ctx.payload()
    payload["extra"]["notes"] = _RunsCode(marker)
    torch.save(payload, path)
    return {"marker": marker}


def _code_pickle_plain(path: Path, ctx: _Context) -> dict[str, Any]:
    import pickle

    marker = path.with_suffix(".marker")
    path.write_bytes(pickle.dumps({"format": "mula-weights", "state": _RunsCode(marker)}))
    return {"marker": marker}


def _weights_folder(path: Path, ctx: _Context) -> None:
    (path / "weights").mkdir(parents=True)
    shutil.copy(ctx.weights(), path / "weights" / "best.pt")


def _weights_specs() -> list[Spec]:
    w, both = WEIGHTS, {"commands": (PREDICT, EVALUATE)}
    return [
        Spec("truncated.pt", w, REFUSED, "a weights file cut at 50% (a copy that did not finish)",
             lambda path, ctx: path.write_bytes(_cut(ctx.weights().read_bytes(), 0.5)), both),
        Spec("model [v2].pt", w, REFUSED, "a text file named .pt whose name holds [brackets]",
             _write("not weights\n"), both),
        Spec("zero_bytes.pt", w, REFUSED, "an empty weights file", _write(b""), both),
        Spec("random_bytes.pt", w, REFUSED, "4 KB of random bytes named .pt",
             _write(_rng("rb").integers(0, 256, 4096, dtype=np.uint8).tobytes()), both),
        Spec("text.pt", w, REFUSED, "a text file named .pt (an HTML error page saved by a download)",
             _write("<html><body>403 Forbidden</body></html>\n"), both),
        Spec("code_pickle.pt", w, REFUSED,
             "a complete weights file with a pickled object whose __reduce__ creates a marker file",
             _code_pickle_in_weights, {**both, "says": "neither a tensor nor a plain value"}),
        Spec("code_pickle_legacy.pt", w, REFUSED,
             "a plain (non-zip) pickle whose __reduce__ creates a marker file", _code_pickle_plain, both),
        Spec("future_version.pt", w, REFUSED, "a weights file of format version 99 (a newer mula)",
             _torch_save(lambda ctx, _: {**ctx.payload(), "format_version": 99}),
             {**both, "says": "format version"}),
        Spec("version_as_text.pt", w, REFUSED, "format_version stored as the text '1'",
             _torch_save(lambda ctx, _: {**ctx.payload(), "format_version": "1"}),
             {**both, "says": "format version"}),
        Spec("authors_checkpoint.pt", w, REFUSED,
             "a checkpoint in another layout (the authors' {'state_dict': ...})",
             _torch_save(lambda ctx, _: {"epoch": 3, "state_dict": ctx.payload()["state_dict"]}),
             {**both, "says": "import-official"}),
        Spec("a_tensor.pt", w, REFUSED, "torch.save of a bare tensor",
             _torch_save(lambda ctx, _: __import__("torch").zeros(3)),
             {**both, "says": "not a mula weights file"}),
        Spec("config_mismatch.pt", w, REFUSED, "tensors of width 16 under a config that says width 32",
             _torch_save(lambda ctx, _: _edit_config(ctx.payload(), width=32)),
             {**both, "says": "does not match"}),
        Spec("invalid_config.pt", w, REFUSED, "a config with -3 stages",
             _torch_save(lambda ctx, _: _edit_config(ctx.payload(), stages=-3)), {**both, "says": "config"}),
        Spec("text.onnx", w, REFUSED, "a text file named .onnx (an exported model's suffix)",
             _write("not onnx\n"), {"commands": (PREDICT,), "says": "ONNX"}),
        Spec("random.torchscript", w, REFUSED, "random bytes named .torchscript",
             _write(_rng("ts").integers(0, 256, 2048, dtype=np.uint8).tobytes()), {"commands": (PREDICT,)}),
        Spec("run_folder", w, REFUSED, "a training run's folder instead of its weights/best.pt",
             _weights_folder, {**both, "says": "weights/best.pt"}),
        Spec("other_dataset.pt", w, REFUSED,
             "PASCAL-Person-Part weights (7 classes, 14 joints) evaluated on a LIP cache",
             lambda path, ctx: _tiny_weights(path, "pascal_person_part", width=8),
             {"commands": (EVALUATE,), "says": "--data"}),
        Spec("renamed_classes.pt", w, REFUSED,
             "weights of another 20-class dataset (same counts as LIP, other class names) evaluated on a "
             "LIP cache",
             lambda path, ctx: _tiny_weights(path, width=8, renamed="my_parts",
                                             classes=["Background", *(f"part-{i}" for i in range(1, 20))]),
             {"commands": (EVALUATE,), "says": "class"}),
    ]


def _edit_config(payload: dict[str, Any], **changes: Any) -> dict[str, Any]:
    payload["config"] = {**payload["config"], **changes}
    return payload


# ---------------------------------------------------------------------------------------------
# caches


def _edited_cache(edit: Callable[[Any], None]) -> Callable[[Path, _Context], None]:
    def write(path: Path, ctx: _Context) -> None:
        import h5py

        shutil.copy(ctx.cache(), path)
        with h5py.File(path, "r+") as f:
            edit(f)

    return write


def _set_attr(name: str, value: Any) -> Callable[[Any], None]:
    def edit(f) -> None:
        f.attrs[name] = value

    return edit


def _delete(*names: str) -> Callable[[Any], None]:
    def edit(f) -> None:
        for name in names:
            del f[name]

    return edit


def _damage_first(kind: str) -> Callable[[Any], None]:
    """Overwrite the first bytes (the file signature) of each split's first encoded image or label map."""

    def edit(f) -> None:
        for split in ("train", "val"):
            data, offset = f[f"{split}/{kind}_data"], f[f"{split}/{kind}_offset"]
            start = int(offset[0])
            data[start:start + 16] = np.full(16, 0x5A, np.uint8)

    return edit


def _cache_specs() -> list[Spec]:
    c, both = CACHE, {"commands": (TRAIN, EVALUATE)}
    redo = {**both, "says": "prepare"}
    other_hash = "0123456789abcdef" * 4
    return [
        Spec("truncated.h5", c, REFUSED, "a cache cut at 50% (a copy that did not finish)",
             lambda path, ctx: path.write_bytes(_cut(ctx.cache().read_bytes(), 0.5)), redo),
        Spec("zero_bytes.h5", c, REFUSED, "an empty file named .h5", _write(b""), redo),
        Spec("text.h5", c, REFUSED, "a text file named .h5", _write("id,path\n1,a.jpg\n"), redo),
        Spec("foreign.h5", c, REFUSED, "a valid HDF5 file that is not a mula cache",
             _bytes(_foreign_h5), {**both, "says": "not a mula data cache"}),
        Spec("altered_fingerprint.h5", c, PROCESSED,
             "a good cache whose fingerprint attribute (the SHA-256 of the source files, shown by "
             "`mula info`) was changed: it identifies the data, nothing depends on it",
             _edited_cache(_set_attr("fingerprint", other_hash)), both),
        Spec("damaged_manifest.h5", c, REFUSED, "a cache whose stored dataset manifest is cut-off JSON",
             _edited_cache(_set_attr("manifest", '{"name": "lip", "classes": ["Backgr')), redo),
        Spec("newer_schema.h5", c, REFUSED, "a cache of schema version 99 (a newer mula)",
             _edited_cache(_set_attr("schema_version", 99)), {**both, "says": "newer"}),
        Spec("incomplete.h5", c, REFUSED, "a cache whose `complete` flag was never set (prepare interrupted)",
             _edited_cache(_set_attr("complete", False)), {**both, "says": "incomplete"}),
        Spec("missing_table.h5", c, REFUSED, "a cache whose joints tables are gone",
             _edited_cache(_delete("train/joints", "val/joints")), {**both, "says": "damaged"}),
        Spec("damaged_image.h5", c, REFUSED,
             "a cache whose first image of each split has its first 16 bytes overwritten (bit rot, a bad "
             "copy)",
             _edited_cache(_damage_first("image")), {**both, "says": "damaged"}),
        Spec("damaged_label.h5", c, REFUSED,
             "a cache whose first label map of each split has its first 16 bytes overwritten",
             _edited_cache(_damage_first("label")), {**both, "says": "damaged"}),
    ]


def _foreign_h5() -> bytes:
    import h5py

    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f["images"] = np.zeros((2, 4, 4), np.uint8)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# config files


def _config_specs() -> list[Spec]:
    k, train = CONFIG, {"commands": (TRAIN,)}
    return [
        Spec("utf8_bom.toml", k, PROCESSED,
             "the tiny recipe saved with a UTF-8 byte-order mark (Windows Notepad)",
             _write("\ufeff" + _TINY_TOML), train),
        Spec("crlf_and_dashes.toml", k, PROCESSED, "the tiny recipe with Windows line ends and comments",
             _write("# tiny\r\n" + _TINY_TOML.replace("\n", "  # set\r\n")), train),
        Spec("unknown_key.toml", k, REFUSED, "a misspelt option (learning_rate for lr)",
             _write("epochs = 3\nlearning_rate = 0.1\n"), {**train, "says": "learning_rate"}),
        Spec("sectioned.toml", k, REFUSED, "options under a [train] table (the file is flat)",
             _write("[train]\nepochs = 3\n"), {**train, "says": "train"}),
        Spec("wrong_type.toml", k, REFUSED, "epochs = \"ten\"", _write('epochs = "ten"\n'),
             {**train, "says": "epochs"}),
        Spec("bool_for_int.toml", k, REFUSED, "batch-size = true", _write("batch-size = true\n"),
             {**train, "says": "batch_size"}),
        Spec("list_for_scalar.json", k, REFUSED, "a JSON list where a number goes",
             _write('{"epochs": [1, 2]}\n'), {**train, "says": "epochs"}),
        Spec("negative_epochs.toml", k, REFUSED, "epochs = -5 (right type, impossible value)",
             _write("epochs = -5\n"), {**train, "says": "epochs"}),
        Spec("nan_lr.toml", k, REFUSED, "lr = nan (TOML allows it)", _write("lr = nan\n"),
             {**train, "says": "lr"}),
        Spec("bad_syntax.toml", k, REFUSED, "a TOML line without '='", _write("epochs 3\n"),
             {**train, "says": "TOML"}),
        Spec("duplicate_key.toml", k, REFUSED, "the same key twice", _write("epochs = 3\nepochs = 4\n"),
             {**train, "says": "TOML"}),
        Spec("bad_syntax.json", k, REFUSED, "JSON with a trailing comma", _write('{"epochs": 3,}\n'),
             {**train, "says": "JSON"}),
        Spec("not_a_table.json", k, REFUSED, "a JSON list instead of an object", _write("[1, 2, 3]\n"),
             {**train, "says": "table"}),
        Spec("bad_syntax.yaml", k, REFUSED,
             "YAML with a tab-indented mapping (refused with or without PyYAML)",
             _write("epochs: 3\n\tlr: 0.1\n"), train),
        Spec("latin1.toml", k, REFUSED, "a config saved in Latin-1 (not UTF-8)",
             _write('name = "caf\u00e9"\n'.encode("latin-1")), {**train, "says": "UTF-8"}),
        Spec("binary.toml", k, REFUSED, "random bytes named .toml",
             _write(_rng("bin").integers(0, 256, 256, dtype=np.uint8).tobytes()), {**train, "says": "UTF-8"}),
        Spec("settings.ini", k, REFUSED, "an INI file (not a supported format)",
             _write("[train]\nepochs=3\n"), {**train, "says": ".toml"}),
    ]


# ---------------------------------------------------------------------------------------------


def _has_av() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def specs(kinds: Iterable[str] = KINDS) -> list[Spec]:
    """The corpus's entries (unwritten): videos only where PyAV is installed."""
    makers = {PICTURE: _picture_specs, VIDEO: _video_specs, WEIGHTS: _weights_specs, CACHE: _cache_specs,
              CONFIG: _config_specs}
    wanted = list(kinds)
    found = [s for kind in KINDS if kind in wanted for s in makers[kind]()]
    return [replace(s, facts={"commands": DEFAULT_COMMANDS[s.kind], **s.facts}) for s in found
            if s.kind != VIDEO or _has_av()]


def names(kind: str) -> list[str]:
    """The names of one kind's entries (for test parametrisation)."""
    return [s.name for s in specs([kind])]


_FOLDERS = {PICTURE: "pictures", VIDEO: "videos", WEIGHTS: "weights", CACHE: "caches", CONFIG: "configs"}
DEFAULT_COMMANDS = {PICTURE: (PREDICT_FOLDER,), VIDEO: (PREDICT_VIDEO,), WEIGHTS: (PREDICT, EVALUATE),
                     CACHE: (TRAIN, EVALUATE), CONFIG: (TRAIN,)}


def write_corpus(folder: Path, kinds: Iterable[str] = KINDS, *, weights: Path | None = None,
                 cache: Path | None = None) -> list[BadInput]:
    """Write the corpus under ``folder`` (one sub-folder per kind: ``pictures/``, ``videos/``, ...).

    Args:
        folder: where to write (created; existing entries are overwritten).
        kinds: which kinds to write.
        weights: a good LIP weights file to derive the weights entries from (default: an untrained
            hg-tiny is built under ``folder/_base``).
        cache: a good LIP cache to derive the cache entries from (default: a 2+2-image LIP tree is
            prepared under ``folder/_base``).

    Returns:
        Every entry written, with its path and stated outcome.
    """
    folder = Path(folder)
    ctx = _Context(folder, weights, cache)
    entries = []
    for spec in specs(kinds):
        where = folder / _FOLDERS[spec.kind]
        where.mkdir(parents=True, exist_ok=True)
        path = where / spec.name
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)
        facts = dict(spec.facts)
        made = spec.write(path, ctx)
        facts.update(made if isinstance(made, dict) else {})
        entries.append(BadInput(spec.name, spec.kind, path, spec.outcome, spec.description, **facts))
    return entries


__all__ = ["DEFAULT_COMMANDS", "KINDS", "OUTCOMES", "TINY_RECIPE", "TINY_TRAIN_FLAGS", "BadInput", "Spec",
           "names", "specs", "write_corpus"]
