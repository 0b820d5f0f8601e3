"""Bad input to `edge convert`: one clear line, nothing written for it, the other slides done.

The contract: a truncated, damaged, unsupported or non-slide input makes `edge convert` exit 2
with ONE line on stderr ("error: <path>: <problem>"), leaves no folder and no hidden
`.NAME.partial-*` leftover for it in OUTDIR, and still converts the good slides given on the
same command line completely. Bytes flipped inside JPEG entropy data may convert (decoders
tolerate them); then the output must be complete and pass dciodvfy.

Bad inputs are built here from the small synthetic slides (and a few real files) in tmp_path.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
import pytest
import tifffile
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import generate_frames
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from edge.convert import convert, output_name
from edge.slide import jpeg
from tests.conftest import REPO, dciodvfy_errors, real_file

WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
SVS_CMU = "aperio-svs/CMU-1-Small-Region.svs"
NDPI = "hamamatsu-ndpi/test3-DAPI-2-387.ndpi"


# -- running the CLI and checking the contract -----------------------------------------------


def run_convert(
    out: Path, *slides: Path, extra: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """`edge convert` in a fresh interpreter; the timeout turns a hang into a failure."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "edge.cli",
            "convert",
            "-q",
            *map(str, slides),
            "-o",
            str(out),
            *extra,
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        cwd=REPO,
    )


def assert_complete(folder: Path) -> None:
    """Every instance readable by pydicom, with every frame its header promises."""
    assert folder.is_dir(), f"{folder} was not written"
    names = sorted(p.name for p in folder.iterdir())
    assert "level-00.dcm" in names, names
    assert all(name.endswith(".dcm") for name in names), names
    for name in names:
        ds = pydicom.dcmread(folder / name)
        assert ds.SOPClassUID == WSI_SOP_CLASS, name
        count = int(ds.NumberOfFrames)
        frames = list(generate_frames(ds.PixelData, number_of_frames=count))
        assert len(frames) == count, name
        assert all(f[:2] in (b"\xff\xd8", b"\xff\x4f") for f in frames), name
        if ds.ImageType[2] == "VOLUME":
            tiles = math.ceil(int(ds.TotalPixelMatrixColumns) / int(ds.Columns)) * math.ceil(
                int(ds.TotalPixelMatrixRows) / int(ds.Rows)
            )
            assert count == tiles * int(ds.get("NumberOfOpticalPaths", 1)) * int(
                ds.get("TotalPixelMatrixFocalPlanes", 1)
            ), name


def assert_rejected(
    proc: subprocess.CompletedProcess[str],
    out: Path,
    bad: Path,
    good: list[Path],
    problem: str,
) -> None:
    """Exit 2, one "error: <bad path>: ..." line naming `problem`, only the good outputs."""
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("error: ") and str(bad) in line, line
    assert problem.lower() in line.lower(), line
    assert sorted(os.listdir(out)) == sorted(output_name(g) for g in good)
    for g in good:
        assert_complete(out / output_name(g))


# -- building bad inputs ---------------------------------------------------------------------


@dataclass(frozen=True)
class Sources:
    svs: Path
    tiff: Path
    ome: Path
    dicom_dir: Path  # a DICOM WSI series converted from the synthetic TIFF


@pytest.fixture(scope="module")
def sources(
    synthetic_svs: Path,
    synthetic_tiff: Path,
    synthetic_ome: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Sources:
    dicom = Path(convert(synthetic_tiff, tmp_path_factory.mktemp("dicom-wsi")).output)
    return Sources(synthetic_svs, synthetic_tiff, synthetic_ome, dicom)


def _tile(path: Path, page: int, index: int | None = None) -> tuple[int, int]:
    """(offset, byte count) of a tile of a TIFF page; the middle one by default."""
    with tifffile.TiffFile(path) as tif:
        p = tif.pages[page]
        index = len(p.dataoffsets) // 2 if index is None else index
        return int(p.dataoffsets[index]), int(p.databytecounts[index])


def _tag(path: Path, page: int, code: int) -> tuple[int, int, int]:
    """(entry offset, value offset, TIFF data type) of a tag of a classic TIFF page."""
    with tifffile.TiffFile(path) as tif:
        tag = tif.pages[page].tags[code]
        return int(tag.offset), int(tag.valueoffset), int(tag.dtype)


def _set_tag(data: bytearray, path: Path, page: int, code: int, value: int) -> None:
    _, at, dtype = _tag(path, page, code)
    struct.pack_into({3: "<H", 4: "<I"}[dtype], data, at, value)


def _page_of(path: Path, word: str) -> int:
    with tifffile.TiffFile(path) as tif:
        return next(p.index for p in tif.pages if word in (p.description or ""))


def _write(dst: Path, data: bytes | bytearray) -> Path:
    dst.write_bytes(bytes(data))
    return dst


def truncated(src: Path, dst: Path, size: int) -> Path:
    return _write(dst, src.read_bytes()[:size])


def patched(src: Path, dst: Path, page: int, values: dict[int, int]) -> Path:
    data = bytearray(src.read_bytes())
    for code, value in values.items():
        _set_tag(data, src, page, code, value)
    return _write(dst, data)


def garbage_tile(src: Path, dst: Path, page: int, index: int | None = None) -> Path:
    offset, count = _tile(src, page, index)
    data = bytearray(src.read_bytes())
    noise = np.random.default_rng(7).integers(0, 256, count, dtype=np.uint8)
    data[offset : offset + count] = noise.tobytes()
    return _write(dst, data)


def next_ifd_offset_at(path: Path, page: int) -> int:
    """File position of the "next IFD" pointer that ends a classic TIFF page's directory."""
    with tifffile.TiffFile(path) as tif:
        ifd = tif.pages[page].offset
    (count,) = struct.unpack_from("<H", path.read_bytes(), ifd)
    return ifd + 2 + 12 * count


def dicom_file(path: Path, sop_class: str, **attributes: object) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.Modality = "Test^Bad", "BAD-1", "OT"
    ds.Rows = ds.Columns = 64
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes(64 * 64)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def edited_dicom(src: Path, dst: Path, **attributes: object) -> Path:
    ds = pydicom.dcmread(src)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.save_as(dst)
    return dst


def _svs_half(s: Sources, d: Path) -> Path:
    return truncated(s.svs, d / "cut-half.svs", s.svs.stat().st_size // 2)


def _svs_after_header(s: Sources, d: Path) -> Path:
    return truncated(s.svs, d / "cut-after-header.svs", _tile(s.svs, 0, 0)[0])


def _svs_inside_header(s: Sources, d: Path) -> Path:
    return truncated(s.svs, d / "cut-inside-header.svs", 60)


def _svs_tail(s: Sources, d: Path) -> Path:
    return truncated(s.svs, d / "cut-tail.svs", s.svs.stat().st_size - 10)


def _tiff_half(s: Sources, d: Path) -> Path:
    return truncated(s.tiff, d / "cut-half.tiff", s.tiff.stat().st_size // 2)


def _ome_tail(s: Sources, d: Path) -> Path:
    return truncated(s.ome, d / "cut-tail.ome.tif", s.ome.stat().st_size - 10)


def _magic_only(s: Sources, d: Path) -> Path:
    return _write(d / "magic-only.svs", b"II*\x00")


def _svs_garbage_tile(s: Sources, d: Path) -> Path:
    return garbage_tile(s.svs, d / "garbage-tile.svs", 0)


def _svs_garbage_level_1(s: Sources, d: Path) -> Path:
    # Found while streaming level 1, when level 0 is already written to the hidden folder.
    with tifffile.TiffFile(s.svs) as tif:
        page = tif.series[0].levels[1].keyframe.index
    return garbage_tile(s.svs, d / "garbage-level-1.svs", page, 3)


def _tiff_garbage_tile(s: Sources, d: Path) -> Path:
    return garbage_tile(s.tiff, d / "garbage-tile.tiff", 0)


def _tile_count_past_end(s: Sources, d: Path) -> Path:
    data = bytearray(s.tiff.read_bytes())
    _, at, _ = _tag(s.tiff, 0, 325)  # TileByteCounts: make the 3rd tile run past the end
    struct.pack_into("<I", data, at + 4 * 2, len(data))
    return _write(d / "count-past-end.tiff", data)


def _photo(s: Sources, d: Path) -> Path:
    path = d / "holiday.tif"
    rng = np.random.default_rng(1)
    tifffile.imwrite(path, rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), photometric="rgb")
    return path


def _jpeg_named_svs(s: Sources, d: Path) -> Path:
    picture = np.full((120, 160, 3), 200, np.uint8)
    return _write(d / "photo-renamed.svs", imagecodecs.jpeg8_encode(picture))


def _text(s: Sources, d: Path) -> Path:
    return _write(d / "notes.svs", b"Patient notes, not a slide.\n" * 20)


def _empty(s: Sources, d: Path) -> Path:
    return _write(d / "empty.svs", b"")


def _tiff_magic_then_noise(s: Sources, d: Path) -> Path:
    noise = np.random.default_rng(3).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    return _write(d / "noise.tiff", b"II*\x00" + noise)


def _missing(s: Sources, d: Path) -> Path:
    return d / "never-written.svs"


def _uint16(s: Sources, d: Path) -> Path:
    path = d / "sixteen-bit.tiff"
    tifffile.imwrite(path, np.zeros((600, 800, 3), np.uint16), tile=(256, 256), photometric="rgb")
    return path


def _rgba(s: Sources, d: Path) -> Path:
    path = d / "rgba.tiff"
    tifffile.imwrite(
        path,
        np.zeros((600, 800, 4), np.uint8),
        tile=(256, 256),
        photometric="rgb",
        extrasamples=[2],
    )
    return path


def _float(s: Sources, d: Path) -> Path:
    path = d / "float.tiff"
    tifffile.imwrite(path, np.zeros((600, 800), np.float32), tile=(256, 256))
    return path


def _unknown_compression(s: Sources, d: Path) -> Path:
    return patched(s.tiff, d / "compression-60001.tiff", 0, {259: 60001})


def _jpeg_labelled_j2k(s: Sources, d: Path) -> Path:
    return patched(s.tiff, d / "jpeg-as-j2k.tiff", 0, {259: 34712})


def _bomb_10m(s: Sources, d: Path) -> Path:
    return patched(s.tiff, d / "bomb-10m.tiff", 0, {256: 10**7, 257: 10**7})


def _bomb_area(s: Sources, d: Path) -> Path:  # each side allowed, the area is not
    return patched(s.tiff, d / "bomb-area.tiff", 0, {256: 4_000_000, 257: 4_000_000})


def _bomb_tiles(s: Sources, d: Path) -> Path:  # plausible size, tile list far too short
    return patched(s.tiff, d / "bomb-tiles.tiff", 0, {256: 100_000, 257: 100_000})


def _bomb_tile_size(s: Sources, d: Path) -> Path:
    return patched(s.tiff, d / "bomb-tile-size.tiff", 0, {322: 1 << 20, 323: 1 << 20})


def _zero_width(s: Sources, d: Path) -> Path:
    return patched(s.tiff, d / "zero-width.tiff", 0, {256: 0})


def _label_bomb(s: Sources, d: Path) -> Path:
    return patched(
        s.svs, d / "label-bomb.svs", _page_of(s.svs, "label"), {256: 60_000, 257: 60_000}
    )


def _float_width(s: Sources, d: Path) -> Path:
    data = bytearray(s.tiff.read_bytes())
    entry, _, _ = _tag(s.tiff, 0, 256)
    struct.pack_into("<H", data, entry + 2, 11)  # ImageWidth typed FLOAT: 2000 -> 2.8e-42
    return _write(d / "float-width.tiff", data)


def _samples_one(s: Sources, d: Path) -> Path:
    return patched(s.tiff, d / "samples-one.tiff", 0, {277: 1})


def _chain_past_end(s: Sources, d: Path) -> Path:
    # Page 0's "next IFD" pointer beyond the end: the smaller levels silently vanished.
    data = bytearray(s.tiff.read_bytes())
    struct.pack_into("<I", data, next_ifd_offset_at(s.tiff, 0), len(data) + 4096)
    return _write(d / "chain-past-end.tiff", data)


def _first_ifd_past_end(s: Sources, d: Path) -> Path:
    data = bytearray(s.svs.read_bytes())
    data[7] ^= 0x80  # high bit of the first IFD offset
    return _write(d / "first-ifd-flipped.svs", data)


def _tag_count_flipped(s: Sources, d: Path) -> Path:
    data = bytearray(s.svs.read_bytes())
    (first,) = struct.unpack_from("<I", data, 4)
    data[first + 1] ^= 0x40  # high byte of IFD 0's tag count: 0x40xx tags
    return _write(d / "tag-count-flipped.svs", data)


def _dicom_sc(s: Sources, d: Path) -> Path:
    return dicom_file(d / "screenshot.dcm", SecondaryCaptureImageStorage)


def _dicom_ct(s: Sources, d: Path) -> Path:
    return dicom_file(d / "ct.dcm", CTImageStorage)


def _dicom_ct_folder(s: Sources, d: Path) -> Path:
    folder = d / "ct-series"
    folder.mkdir()
    for i in range(3):
        dicom_file(folder / f"{i}.dcm", CTImageStorage, InstanceNumber=i + 1)
    return folder


def _dicom_frames_off(s: Sources, d: Path) -> Path:
    src = s.dicom_dir / "level-00.dcm"
    frames = int(pydicom.dcmread(src, stop_before_pixels=True).NumberOfFrames)
    return edited_dicom(src, d / "frames-off.dcm", NumberOfFrames=frames + 1)


def _dicom_samples(s: Sources, d: Path) -> Path:
    return edited_dicom(s.dicom_dir / "level-00.dcm", d / "two-samples.dcm", SamplesPerPixel=2)


def _dicom_samples_grey(s: Sources, d: Path) -> Path:  # colour JPEG frames, header says grey
    return edited_dicom(
        s.dicom_dir / "level-00.dcm",
        d / "grey-header.dcm",
        SamplesPerPixel=1,
        PhotometricInterpretation="MONOCHROME2",
    )


def _dicom_truncated(s: Sources, d: Path) -> Path:
    src = s.dicom_dir / "level-00.dcm"
    return truncated(src, d / "cut-wsi.dcm", src.stat().st_size // 2)


def _dicom_preamble_only(s: Sources, d: Path) -> Path:
    return _write(d / "preamble.dcm", b"\0" * 128 + b"DICM")


def _dicom_folder_one_cut(s: Sources, d: Path) -> Path:
    folder = d / "series-one-cut"
    shutil.copytree(s.dicom_dir, folder)
    victim = folder / "level-01.dcm"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size - 100])
    return folder


def _empty_folder(s: Sources, d: Path) -> Path:
    folder = d / "empty-folder"
    folder.mkdir()
    return folder


def _folder_without_dicom(s: Sources, d: Path) -> Path:
    folder = d / "scans-folder"
    folder.mkdir()
    (folder / "README.txt").write_text("scanner export instructions\n")
    return folder


Case = Callable[[Sources, Path], Path]
CASES: dict[str, tuple[Case, str]] = {
    # truncated files
    "svs-cut-in-half": (_svs_half, "truncated"),
    "svs-cut-after-header": (_svs_after_header, "truncated"),
    "svs-cut-inside-header": (_svs_inside_header, "damaged"),
    "svs-cut-10-bytes-short": (_svs_tail, "truncated"),
    "tiff-cut-in-half": (_tiff_half, "truncated"),
    "ome-cut-10-bytes-short": (_ome_tail, "damaged TIFF structure"),  # OME-XML is last
    "tiff-magic-only": (_magic_only, "damaged"),
    "tile-byte-count-past-end": (_tile_count_past_end, "truncated"),
    # damaged tile data
    "svs-garbage-tile": (_svs_garbage_tile, "not a complete JPEG stream"),
    "svs-garbage-tile-level-1": (_svs_garbage_level_1, "level 1 tile 3 (column 0, row 1)"),
    "tiff-garbage-tile": (_tiff_garbage_tile, "not a complete JPEG stream"),
    # not slides at all
    "photo-tiff": (_photo, "not a whole-slide image"),
    "jpeg-named-svs": (_jpeg_named_svs, "not a TIFF-based slide"),
    "text-file": (_text, "not a TIFF-based slide"),
    "empty-file": (_empty, "empty file"),
    "tiff-magic-then-noise": (_tiff_magic_then_noise, "holds no image"),
    "missing-file": (_missing, "no such file"),
    "empty-folder": (_empty_folder, "no DICOM WSI instance"),
    "folder-without-dicom": (_folder_without_dicom, "folder holds no DICOM WSI instance"),
    # unsupported pixel formats and compressions
    "uint16-tiles": (_uint16, "16 bits"),
    "rgba-tiles": (_rgba, "4 samples"),
    "float-tiles": (_float, "32 bits"),
    "unknown-compression": (_unknown_compression, "uses TIFF compression unknown (60001)"),
    "jpeg-tiles-labelled-j2k": (_jpeg_labelled_j2k, "does not start with SOC"),
    # absurd headers (decompression bombs)
    "bomb-10m-x-10m": (_bomb_10m, "decompression bomb"),
    "bomb-area": (_bomb_area, "decompression bomb"),
    "bomb-tile-list-short": (_bomb_tiles, "its size needs"),
    "bomb-tile-size": (_bomb_tile_size, "1048576x1048576 tiles"),
    "zero-width": (_zero_width, "empty size"),
    "label-bomb": (_label_bomb, "label image claims 60000x60000"),
    # openslide-style damage to the directory structure
    "width-typed-float": (_float_width, "non-integer"),
    "samples-per-pixel-flipped": (_samples_one, "colour components"),
    "ifd-chain-past-end": (_chain_past_end, "chain points past the end"),
    "first-ifd-offset-flipped": (_first_ifd_past_end, "holds no image"),
    "ifd-tag-count-flipped": (_tag_count_flipped, "damaged"),
    # DICOM that is not (valid) WSI
    "dicom-secondary-capture": (_dicom_sc, "not a VL Whole Slide Microscopy Image"),
    "dicom-ct": (_dicom_ct, "not a VL Whole Slide Microscopy Image"),
    "dicom-ct-folder": (_dicom_ct_folder, "not a VL Whole Slide Microscopy Image"),
    "dicom-wsi-frames-off-by-one": (_dicom_frames_off, "NumberOfFrames"),
    "dicom-wsi-two-samples": (_dicom_samples, "SamplesPerPixel is 2"),
    "dicom-wsi-grey-header-colour-frames": (_dicom_samples_grey, "colour components"),
    "dicom-wsi-cut-in-half": (_dicom_truncated, "truncated"),
    "dicom-preamble-only": (_dicom_preamble_only, "not a VL Whole Slide Microscopy Image"),
    "dicom-folder-one-instance-cut": (_dicom_folder_one_cut, "truncated"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_refused_alone_and_the_good_slides_convert(
    name: str, sources: Sources, tmp_path: Path
) -> None:
    build, problem = CASES[name]
    work = tmp_path / "in"
    work.mkdir()
    bad = build(sources, work)
    out = tmp_path / "out"
    good = [sources.tiff, sources.ome]  # one before and one after the bad input
    proc = run_convert(out, good[0], bad, good[1])
    assert_rejected(proc, out, bad, good, problem)


def test_several_bad_inputs_each_get_their_own_line(sources: Sources, tmp_path: Path) -> None:
    work = tmp_path / "in"
    work.mkdir()
    bad = [
        _svs_half(sources, work),
        _photo(sources, work),
        _dicom_ct(sources, work),
        _svs_garbage_tile(sources, work),
    ]
    out = tmp_path / "out"
    proc = run_convert(out, bad[0], bad[1], sources.tiff, bad[2], bad[3])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == len(bad), proc.stderr
    for path, line in zip(bad, lines, strict=True):
        assert line.startswith(f"error: {path}"), line
    assert os.listdir(out) == [output_name(sources.tiff)]
    assert_complete(out / output_name(sources.tiff))


def test_failed_reconversion_keeps_the_previous_output(sources: Sources, tmp_path: Path) -> None:
    slide = tmp_path / "case-42.svs"
    shutil.copy(sources.svs, slide)
    out = tmp_path / "out"
    assert run_convert(out, slide).returncode == 0
    before = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (out / "case-42").iterdir()
    }
    garbage_tile(sources.svs, slide, 2, 3)  # rewritten, damaged: found after level 0 is done
    proc = run_convert(out, slide)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert os.listdir(out) == ["case-42"]  # no partial folder next to it
    after = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (out / "case-42").iterdir()
    }
    assert after == before


# -- inputs that are odd but must convert ----------------------------------------------------


@pytest.mark.parametrize("compression", ["lzw", "zlib", "none"])
def test_tiles_in_a_non_dicom_compression_are_re_encoded(compression: str, tmp_path: Path) -> None:
    from edge.slide.synthetic import tissue

    path = tmp_path / f"tiles-{compression}.tiff"
    tifffile.imwrite(
        path,
        tissue(900, 700, seed=5),
        tile=(256, 256),
        photometric="rgb",
        compression=None if compression == "none" else compression,
        resolution=(40000, 40000),
        resolutionunit="CENTIMETER",
    )
    out = tmp_path / "out"
    proc = run_convert(out, path)
    assert proc.returncode == 0, proc.stderr
    folder = out / output_name(path)
    assert_complete(folder)
    ds = pydicom.dcmread(folder / "level-00.dcm", stop_before_pixels=True)
    assert (int(ds.TotalPixelMatrixColumns), int(ds.TotalPixelMatrixRows)) == (900, 700)
    for file in sorted(folder.glob("*.dcm")):
        assert dciodvfy_errors(file) == [], file.name


def test_damaged_optical_path_item_in_dicom_input_is_replaced(
    sources: Sources, tmp_path: Path
) -> None:
    # A shortened CodeMeaning length makes the rest of its text parse as an element with a
    # bogus tag and VR; writing that item back used to crash (TypeError from pydicom).
    src = sources.dicom_dir / "level-00.dcm"
    data = bytearray(src.read_bytes())
    element = b"\x08\x00\x04\x01LO" + struct.pack("<H", 26) + b"Transmission illumination "
    at = data.find(element)
    assert at > 0
    struct.pack_into("<H", data, at + 6, 18)
    bad = _write(tmp_path / "bad-optical-path.dcm", data)
    out = tmp_path / "out"
    proc = run_convert(out, bad)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 0, proc.stderr
    folder = out / output_name(bad)
    assert_complete(folder)
    ds = pydicom.dcmread(folder / "level-00.dcm", stop_before_pixels=True)
    assert ds.OpticalPathSequence[0].OpticalPathIdentifier
    assert dciodvfy_errors(folder / "level-00.dcm") == []


# -- random damage: openslide-style flipped bytes ----------------------------------------------


def _flip(data: bytearray, rng: np.random.Generator, positions: list[int]) -> None:
    for pos in positions:
        data[pos] ^= 1 << int(rng.integers(8))


def _directory_spans(path: Path) -> list[tuple[int, int]]:
    """(start, end) of every IFD with its out-of-line tag values (the structural bytes)."""
    spans = []
    with tifffile.TiffFile(path) as tif:
        for page in tif.pages:
            ends = [page.offset + 2 + 12 * len(page.tags) + 4]
            ends += [
                t.valueoffset + t.count * 8
                for t in page.tags.values()
                if t.valueoffset > page.offset and t.code not in (270,)
            ]
            spans.append((page.offset, min(max(ends), page.offset + 4096)))
    return spans


def _entropy_spans(path: Path, page: int, tiles: list[int]) -> list[tuple[int, int]]:
    """(start, end) of the entropy-coded bytes of some JPEG tiles (after SOS, before EOI)."""
    data = path.read_bytes()
    spans = []
    for index in tiles:
        offset, count = _tile(path, page, index)
        tile = data[offset : offset + count]
        segments = jpeg.iter_segments(tile)
        assert segments[-1][0] == 0xDA
        spans.append((offset + segments[-1][2], offset + count - 2))
    return spans


def _check_batch(
    proc: subprocess.CompletedProcess[str],
    out: Path,
    mutants: list[Path],
    good: Path,
    validate: bool,
) -> tuple[int, int]:
    """Per mutant: exactly one error line and no output, or a complete (valid) output."""
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    failed = 0
    for mutant in mutants:
        mine = [line for line in errors if line.startswith(f"error: {mutant}:")]
        folder = out / output_name(mutant)
        if mine:
            failed += 1
            assert len(mine) == 1, mine
            assert not folder.exists(), folder
        else:
            assert_complete(folder)
            if validate:
                for file in sorted(folder.glob("*.dcm")):
                    assert dciodvfy_errors(file) == [], f"{mutant.name}: {file.name}"
    assert len(errors) == failed, proc.stderr
    assert proc.returncode == (2 if failed else 0), proc.stderr
    assert_complete(out / output_name(good))
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert leftovers == []
    return failed, len(mutants) - failed


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("which", ["svs", "tiff", "ome"])
def test_flipped_bytes_in_the_directories(
    which: str, seed: int, sources: Sources, tmp_path: Path
) -> None:
    src: Path = getattr(sources, which)
    raw = src.read_bytes()
    spans = _directory_spans(src)
    rng = np.random.default_rng(seed)
    work = tmp_path / "in"
    work.mkdir()
    mutants = []
    for i in range(16):
        data = bytearray(raw)
        start, end = spans[int(rng.integers(len(spans)))]
        _flip(data, rng, [int(p) for p in rng.integers(start, end, 3)])
        mutants.append(_write(work / f"m{i:02d}-{src.name}", data))
    out = tmp_path / "out"
    proc = run_convert(out, *mutants, sources.tiff if which != "tiff" else sources.ome)
    failed, _ = _check_batch(
        proc, out, mutants, sources.tiff if which != "tiff" else sources.ome, validate=False
    )
    assert failed > 0  # structural damage is found, not glossed over


@pytest.mark.slow
@pytest.mark.parametrize("dyadic", [False, True])
def test_flipped_bytes_in_jpeg_entropy_data(dyadic: bool, sources: Sources, tmp_path: Path) -> None:
    raw = sources.svs.read_bytes()
    with tifffile.TiffFile(sources.svs) as tif:
        count = len(tif.pages[0].dataoffsets)
    spans = _entropy_spans(sources.svs, 0, [count // 3, count // 2, 2 * count // 3])
    rng = np.random.default_rng(11 + dyadic)
    work = tmp_path / "in"
    work.mkdir()
    mutants = []
    for i in range(4):
        data = bytearray(raw)
        for start, end in spans:
            _flip(data, rng, [int(p) for p in rng.integers(start, end, 4)])
        mutants.append(_write(work / f"e{i:02d}.svs", data))
    out = tmp_path / "out"
    proc = run_convert(out, *mutants, sources.tiff, extra=("--dyadic",) if dyadic else ())
    _check_batch(proc, out, mutants, sources.tiff, validate=True)


# -- real scanner files ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("where", ["half", "after-first-ifd", "10-bytes-short"])
@pytest.mark.parametrize("relative", [SVS_CMU, NDPI])
def test_truncated_real_files(relative: str, where: str, sources: Sources, tmp_path: Path) -> None:
    src = real_file(relative)
    size = src.stat().st_size
    with tifffile.TiffFile(src) as tif:
        first_ifd_end = tif.pages[0].offset + 2 + 12 * len(tif.pages[0].tags) + 4
    cut = {"half": size // 2, "after-first-ifd": first_ifd_end, "10-bytes-short": size - 10}
    bad = truncated(src, tmp_path / f"cut-{src.name}", cut[where])
    out = tmp_path / "out"
    proc = run_convert(out, bad, sources.tiff)
    assert_rejected(proc, out, bad, [sources.tiff], "truncated")


@pytest.mark.slow
@pytest.mark.parametrize("region", ["directories", "strip-data"])
def test_flipped_bytes_in_a_real_ndpi(region: str, sources: Sources, tmp_path: Path) -> None:
    src = real_file(NDPI)
    raw = src.read_bytes()
    rng = np.random.default_rng(5)
    if region == "directories":
        spans = _directory_spans(src)
    else:
        # NDPI strips are bare entropy-coded runs between restart markers (the JPEG header
        # is shared); keep each strip's closing marker intact.
        with tifffile.TiffFile(src) as tif:
            page = tif.series[0].levels[0].keyframe
            n = len(page.dataoffsets)
            spans = [
                (int(page.dataoffsets[i]), int(page.dataoffsets[i] + page.databytecounts[i]) - 2)
                for i in (n // 3, n // 2)
            ]
    work = tmp_path / "in"
    work.mkdir()
    mutants = []
    for i in range(3):
        data = bytearray(raw)
        start, end = spans[int(rng.integers(len(spans)))]
        _flip(data, rng, [int(p) for p in rng.integers(start, end, 4)])
        mutants.append(_write(work / f"n{i}-{src.name}", data))
    out = tmp_path / "out"
    proc = run_convert(out, *mutants, sources.tiff)
    _check_batch(proc, out, mutants, sources.tiff, validate=region == "strip-data")


def test_stray_files_beside_a_dicom_series_are_ignored(tmp_path: Path) -> None:
    """Exports carry notes, checksums and DICOMDIR-less extras next to the instances."""
    series = tmp_path / "series"
    shutil.copytree(real_file("dicom-wsi2dcm-cmu1-small-region"), series)
    (series / "README.txt").write_text("scanned by night shift\n")
    (series / "SHA256SUMS").write_text("0" * 64 + "  level-0.dcm\n")
    proc = subprocess.run(
        [sys.executable, "-m", "edge.cli", "convert", str(series), "-o", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "series" / "level-00.dcm").is_file()


def test_unknown_vr_inside_an_optical_path_item_is_not_carried(tmp_path: Path) -> None:
    """Regression (found by the fuzzer): a damaged VR deep in OpticalPathSequence made pydicom
    raise NotImplementedError only when the value was first used, while writing the output."""
    source = tmp_path / "src"
    shutil.copytree(real_file("dicom-wsi2dcm-cmu1-small-region"), source)
    first = convert(source, tmp_path / "first")
    level0 = Path(first.output) / "level-00.dcm"
    data = bytearray(level0.read_bytes())
    code_value = b"\x08\x00\x00\x01SH\x06\x00111741"  # (0008,0100) SH "111741"
    at = data.index(code_value)
    data[at + 4 : at + 6] = b"RH"
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "level-00.dcm").write_bytes(bytes(data))
    result = convert(damaged, tmp_path / "out")
    out = Path(result.output) / "level-00.dcm"
    assert dciodvfy_errors(out) == []
    path_item = pydicom.dcmread(out, stop_before_pixels=True).OpticalPathSequence[0]
    assert path_item.IlluminationTypeCodeSequence[0].CodeValue == "111741"
