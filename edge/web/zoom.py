"""Images of a slide: the QC mosaic and heatmaps, and the deep-zoom viewer with its tiles."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, Response

from edge.web import data, images, tiles
from edge.web.common import JobId, job_or_404, render
from edge.web.security import Caller, viewer

router = APIRouter(include_in_schema=False)


@router.get("/slides/{job_id}/image/{name}")
def image(
    request: Request, job_id: JobId, name: str, who: Annotated[Caller, Depends(viewer)]
) -> Response:
    """The mosaic ('slide') or a class heatmap: names from a fixed list, never a path."""
    if name != "slide" and name not in data.HEATMAP_CLASSES:
        choices = ", ".join(("slide", *data.HEATMAP_CLASSES))
        raise HTTPException(404, f"no image {name!r}; images are: {choices}")
    job = job_or_404(request, job_id)
    path = data.heatmap_file(job, name, request.app.state.roots)
    if path is None:
        raise HTTPException(404, f"slide {job_id} has no {name} image (no QC output)")
    headers = {"Cache-Control": "private, max-age=300"}
    if name == "slide":
        return Response(path.read_bytes(), media_type="image/jpeg", headers=headers)
    return Response(images.overlay_png(path, name), media_type="image/png", headers=headers)


def _pyramid(request: Request, job_id: int) -> list[tiles.Level]:
    job = job_or_404(request, job_id)
    folder = data.output_folder(job, request.app.state.roots)
    if folder is None:
        raise HTTPException(404, f"slide {job_id} has no DICOM output to view")
    try:
        found = tiles.levels(folder)
    except tiles.TileError as exc:
        raise HTTPException(404, f"slide {job_id} cannot be viewed: {exc.args[0]}") from exc
    if not found:
        raise HTTPException(404, f"slide {job_id} has no pyramid levels (delivered and removed?)")
    return found


@router.get("/slides/{job_id}/view")
def viewer_page(
    request: Request, job_id: JobId, who: Annotated[Caller, Depends(viewer)]
) -> Response:
    job = job_or_404(request, job_id)
    found = _pyramid(request, job_id)
    report = data.read_report(job["report"]) or {}
    downsample = report.get("downsample")
    roots = request.app.state.roots
    # Heatmaps overlay the zoom only when the report says their scale (level-0 px per pixel).
    layers = (
        [c for c in data.HEATMAP_CLASSES if data.heatmap_file(job, c, roots) is not None]
        if isinstance(downsample, int | float) and downsample > 0
        else []
    )
    return render(
        request,
        "view.html",
        who,
        job=job,
        levels=[lv.public() for lv in found],
        layers=layers,
        downsample=downsample or 0,
        report=report,
    )


@router.get("/slides/{job_id}/tiles/{level}/{column}/{row}.jpg")
def tile(
    request: Request,
    job_id: JobId,
    level: Annotated[int, PathParam(ge=0, lt=tiles.MAX_LEVELS)],
    column: Annotated[int, PathParam(ge=0, le=1_000_000)],
    row: Annotated[int, PathParam(ge=0, le=1_000_000)],
    who: Annotated[Caller, Depends(viewer)],
) -> Response:
    """One tile of one level: every part of the URL is a number, never a path."""
    found = _pyramid(request, job_id)
    if level >= len(found):
        raise HTTPException(404, f"slide {job_id} has levels 0..{len(found) - 1}")
    lv = found[level]
    if column >= lv.columns or row >= lv.rows:
        raise HTTPException(
            404, f"level {level} has {lv.columns} x {lv.rows} tiles; no tile {column}, {row}"
        )
    try:
        body = tiles.tile(lv, column, row)
    except (tiles.TileError, OSError) as exc:
        raise HTTPException(404, f"tile unreadable: {exc}") from exc
    return Response(
        body, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"}
    )


@router.get("/slides/{job_id}/dicom/{name}")
def qc_dicom(
    request: Request, job_id: JobId, name: str, who: Annotated[Caller, Depends(viewer)]
) -> Response:
    """A QC result instance (SEG, SR, annotations) as a DICOM file, for a viewer or the PACS
    team; names from a fixed list, never a path."""
    if name not in data.QC_OBJECTS:
        raise HTTPException(404, f"no QC object {name!r}; they are: {', '.join(data.QC_OBJECTS)}")
    job = job_or_404(request, job_id)
    path = data.qc_object_file(job, name, request.app.state.roots)
    if path is None:
        raise HTTPException(404, f"slide {job_id} has no {name} object (QC not written)")
    return FileResponse(
        path,
        media_type="application/dicom",
        filename=f"slide-{job_id}-{data.QC_OBJECTS[name][0]}",
    )


@router.get("/slides/{job_id}/label")
def label(request: Request, job_id: JobId, who: Annotated[Caller, Depends(viewer)]) -> Response:
    """The slide's label image (its first frame as JPEG): the technician checks it against
    the requisition."""
    job = job_or_404(request, job_id)
    path = data.label_file(job, request.app.state.roots)
    if path is None:
        raise HTTPException(404, f"slide {job_id} has no label image")
    try:
        level = tiles.levels_of_file(path)
        body = tiles.tile(level, 0, 0)
    except tiles.TileError as exc:
        raise HTTPException(404, f"slide {job_id}: label unreadable: {exc}") from exc
    return Response(body, media_type="image/jpeg", headers={"Cache-Control": "private"})
