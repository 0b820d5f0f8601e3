"""Synthetic SVS, generic TIFF and OME-TIFF: structure, pixel identity, metadata, UIDs."""

from __future__ import annotations

import itertools
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
import tifffile
import wsidicom

from edge.convert import ConvertOptions, convert
from edge.slide.open import open_slide
from tests.conftest import dciodvfy_errors
from tests.helpers import dicom_frames, dicom_mosaic


def _levels_of(path: Path) -> list[np.ndarray]:
    with tifffile.TiffFile(path) as tif:
        if tif.is_svs or tif.is_ome:
            return [np.asarray(level.asarray()) for level in tif.series[0].levels]
        return [p.asarray() for p in tif.pages]


@pytest.mark.parametrize("fixture", ["synthetic_svs", "synthetic_tiff", "synthetic_ome"])
def test_copied_levels_equal_source_and_pyramid_reaches_one_tile(
    fixture: str, request: pytest.FixtureRequest, out_dir: Path
) -> None:
    source: Path = request.getfixturevalue(fixture)
    result = convert(source, out_dir)
    volumes = [i for i in result.instances if "VOLUME" in i["type"]]
    copied = [i for i in volumes if i["how"] == "copied"]
    src_levels = _levels_of(source)
    assert len(copied) == len(src_levels)
    for inst, pixels in zip(copied, src_levels, strict=True):
        assert np.array_equal(dicom_mosaic(Path(result.output) / inst["file"]), pixels)
    last = volumes[-1]
    assert last["frames"] == 1
    for inst in result.instances:
        assert dciodvfy_errors(Path(result.output) / inst["file"]) == []


def test_svs_metadata_reaches_the_dicom_header(synthetic_svs: Path, out_dir: Path) -> None:
    result = convert(synthetic_svs, out_dir)
    out = Path(result.output)
    ds = pydicom.dcmread(out / "level-00.dcm", stop_before_pixels=True)
    assert ds.ContainerIdentifier == "SYNTH-0001"  # Aperio Barcode field
    spacing = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    assert float(spacing[0]) == pytest.approx(0.00025)
    assert ds.ImageType[0] == "ORIGINAL"  # level 0 copied as the scanner wrote it
    assert ds.AcquisitionDateTime.startswith("20261127093000")
    assert ds.Manufacturer == "Aperio"
    kinds = {i["type"].split("\\")[2] for i in result.instances}
    assert {"LABEL", "OVERVIEW", "THUMBNAIL"} <= kinds
    label = pydicom.dcmread(out / "label.dcm", stop_before_pixels=True)
    assert label.BarcodeValue == "SYNTH-0001" and label.BurnedInAnnotation == "YES"
    thumb = pydicom.dcmread(out / "thumbnail.dcm", stop_before_pixels=True)
    thumb_spacing = thumb.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(thumb_spacing.PixelSpacing[0]) > float(spacing[0])


def test_rerun_gives_the_same_uids_and_replaces_the_output(
    synthetic_tiff: Path, out_dir: Path
) -> None:
    first = convert(synthetic_tiff, out_dir)
    uids1 = [
        pydicom.dcmread(Path(first.output) / i["file"]).SOPInstanceUID for i in first.instances
    ]
    second = convert(synthetic_tiff, out_dir)
    uids2 = [
        pydicom.dcmread(Path(second.output) / i["file"]).SOPInstanceUID for i in second.instances
    ]
    assert first.study_uid == second.study_uid and first.series_uid == second.series_uid
    assert uids1 == uids2
    assert sorted(p.name for p in out_dir.iterdir()) == [Path(first.output).name]
    # Different settings are a different derived series, in the same study only if told so.
    third = convert(synthetic_tiff, out_dir, ConvertOptions(quality=80))
    assert third.series_uid != first.series_uid


def test_uid_root_is_used(synthetic_tiff: Path, out_dir: Path) -> None:
    root = "1.2.826.0.1.3680043.10.999"
    result = convert(synthetic_tiff, out_dir, ConvertOptions(uid_root=root))
    ds = pydicom.dcmread(Path(result.output) / "level-00.dcm", stop_before_pixels=True)
    for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID):
        assert uid.startswith(root + ".") and len(uid) <= 64


def test_sidecar_sets_patient_and_study(tmp_path: Path, synthetic_tiff: Path) -> None:
    slide = tmp_path / "S-26-0042.tiff"
    slide.write_bytes(synthetic_tiff.read_bytes())
    slide.with_suffix(".json").write_text(
        '{"PatientName": "Doe^Jane", "PatientID": "P123", "AccessionNumber": "S26-42"}'
    )
    result = convert(slide, tmp_path / "out")
    ds = pydicom.dcmread(Path(result.output) / "level-00.dcm", stop_before_pixels=True)
    assert (str(ds.PatientName), ds.PatientID, ds.AccessionNumber) == ("Doe^Jane", "P123", "S26-42")
    assert dciodvfy_errors(Path(result.output) / "level-00.dcm") == []


def test_filename_pattern_sets_attributes(tmp_path: Path, synthetic_tiff: Path) -> None:
    slide = tmp_path / "ACC777_P999.tiff"
    slide.write_bytes(synthetic_tiff.read_bytes())
    options = ConvertOptions(filename_pattern=r"(?P<AccessionNumber>[^_]+)_(?P<PatientID>[^.]+)")
    result = convert(slide, tmp_path / "out", options)
    ds = pydicom.dcmread(Path(result.output) / "level-00.dcm", stop_before_pixels=True)
    assert (ds.AccessionNumber, ds.PatientID) == ("ACC777", "P999")


def test_dyadic_adds_the_missing_2x_levels(synthetic_svs: Path, out_dir: Path) -> None:
    plain = convert(synthetic_svs, out_dir / "a")
    dyadic = convert(synthetic_svs, out_dir / "b", ConvertOptions(dyadic=True))
    widths = [i["width"] for i in dyadic.instances if "VOLUME" in i["type"]]
    assert all(a in (2 * b, 2 * b - 1) for a, b in itertools.pairwise(widths))
    assert len(widths) > len([i for i in plain.instances if "VOLUME" in i["type"]])


@pytest.mark.parametrize("fmt", ["jpeg2000", "htj2k", "jpegxl"])
def test_other_codecs_for_reencoded_levels(fmt: str, tmp_path: Path) -> None:
    # LZW tiles cannot be copied: the level is re-encoded with the chosen codec.
    image = np.zeros((600, 700, 3), np.uint8)
    image[..., 0] = np.arange(700, dtype=np.uint8)[None, :] // 3
    image[..., 1] = 180
    src = tmp_path / "lzw.tiff"
    tifffile.imwrite(src, image, tile=(256, 256), compression="lzw", photometric="rgb")
    result = convert(src, tmp_path / "out", ConvertOptions(format=fmt, quality=100))
    first = Path(result.output) / "level-00.dcm"
    assert result.instances[0]["how"] == "re-encoded"
    frames = dicom_frames(first)
    assert len(frames) == 9
    if fmt == "jpeg2000":  # this Debian's dicom3tools predates the HTJ2K and JPEG XL syntaxes
        assert dciodvfy_errors(first) == []
    # OpenSlide reads neither HTJ2K nor JPEG XL; wsidicom reads all three. Lossless: exact.
    with wsidicom.WsiDicom.open(result.output) as wsi:
        assert np.array_equal(np.asarray(wsi.read_region((0, 0), 0, (700, 600))), image)


def test_slide_source_streams_every_frame_once(synthetic_svs: Path) -> None:
    source = open_slide(synthetic_svs)
    try:
        for level in source.levels:
            indices = [f.index for f in source.frames(level)]
            assert indices == list(range(level.frame_count))
    finally:
        source.close()


def test_aperio_33003_ycbcr_jpeg2000_is_converted_to_rgb(tmp_path: Path) -> None:
    """Aperio 33003 tiles hold YCbCr without the J2K colour transform: decode, convert, encode."""
    import imagecodecs

    from edge.slide.synthetic import tissue
    from tests.helpers import psnr

    rgb = tissue(512, 512, seed=4)
    f = rgb.astype(np.float32)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    ycc = np.stack(
        [
            0.299 * r + 0.587 * g + 0.114 * b,
            128 - 0.168736 * r - 0.331264 * g + 0.5 * b,
            128 + 0.5 * r - 0.418688 * g - 0.081312 * b,
        ],
        -1,
    )
    ycc8 = np.clip(np.rint(ycc), 0, 255).astype(np.uint8)
    tiles = [
        bytes(
            imagecodecs.jpeg2k_encode(
                ycc8[y : y + 256, x : x + 256], codecformat="J2K", reversible=True, mct=False
            )
        )
        for y in (0, 256)
        for x in (0, 256)
    ]
    src = tmp_path / "ycc.svs"
    tifffile.imwrite(
        src,
        iter(tiles),
        shape=(512, 512, 3),
        dtype="uint8",
        tile=(256, 256),
        compression=33003,
        photometric="rgb",
        metadata=None,
        description="Aperio Image Library v12.0.15 \r\n512x512 (256x256) "
        "J2K/YUV16|AppMag = 20|MPP = 0.5",
    )
    result = convert(src, tmp_path / "out")
    assert result.instances[0]["how"] == "re-encoded"
    out = Path(result.output) / "level-00.dcm"
    assert psnr(dicom_mosaic(out), rgb) > 40
    assert dciodvfy_errors(out) == []


def test_damaged_header_text_is_cleaned_not_copied(tmp_path: Path) -> None:
    """Control characters, backslashes (DICOM's value delimiter) and malformed dates from a
    scanner header or a sidecar must not reach the DICOM header."""
    from edge.slide.synthetic import tissue

    src = tmp_path / "odd.tiff"
    tifffile.imwrite(
        src,
        tissue(600, 500, 1),
        tile=(256, 256),
        compression="jpeg",
        photometric="rgb",
        software="Scan\x01Soft\\2.0\x00",
        metadata=None,
    )
    src.with_suffix(".json").write_text(
        '{"PatientName": "Doe^Jane\\u0007", "StudyDate": "yesterday", "PatientSex": "female",'
        ' "AccessionNumber": "A\\\\B-1234567890123456789"}'
    )
    result = convert(src, tmp_path / "out")
    level0 = Path(result.output) / "level-00.dcm"
    ds = pydicom.dcmread(level0, stop_before_pixels=True)
    assert str(ds.PatientName) == "Doe^Jane"
    # "yesterday" is dropped; the study date falls back to the file's own time.
    assert ds.StudyDate == datetime.fromtimestamp(src.stat().st_mtime).strftime("%Y%m%d")
    assert ds.PatientSex == ""
    assert "\\" not in ds.AccessionNumber and len(ds.AccessionNumber) <= 16
    assert all(ord(c) >= 32 for v in ds.SoftwareVersions for c in v)
    assert dciodvfy_errors(level0) == []
