"""WADO-URI presentationUID + presentationSeriesUID: a Grayscale Softcopy Presentation State applied
through HTTP, every output compared with an independent computation in the test."""
from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset

from dicomweb_wsgi.testing import make_dataset, new_uid, store
from .test_wado_uri import ct, decode, image, linear_window, non_image, wado_url  # noqa: F401 (ct: fixture)

GSPS = "1.2.840.10008.5.1.4.1.1.11.1"


def gsps(target: Dataset, *, frames: list[int] | None = None, **attributes: object) -> Dataset:
    """A GSPS in ``target``'s study referencing it (IDENTITY presentation LUT, no VOI)."""
    ps = non_image(study_uid=target.StudyInstanceUID, sop_class_uid=GSPS, modality="PR")
    ref = Dataset()
    ref.ReferencedSOPClassUID = target.SOPClassUID
    ref.ReferencedSOPInstanceUID = target.SOPInstanceUID
    if frames:
        ref.ReferencedFrameNumber = frames
    series = Dataset()
    series.SeriesInstanceUID = target.SeriesInstanceUID
    series.ReferencedImageSequence = [ref]
    ps.ReferencedSeriesSequence = [series]
    ps.PresentationLUTShape = "IDENTITY"
    ps.ImageRotation = 0
    ps.ImageHorizontalFlip = "N"
    for key, value in attributes.items():
        setattr(ps, key, value)
    return ps


def voi(center: float, width: float, refs: list[str] | None = None) -> Dataset:
    item = Dataset()
    item.WindowCenter, item.WindowWidth = center, width
    if refs:
        item.ReferencedImageSequence = [_ref(uid) for uid in refs]
    return item


def _ref(uid: str) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ref.ReferencedSOPInstanceUID = uid
    return ref


def rendered(client, target: Dataset, ps: Dataset | None, status: int = 200, **params: object):
    """Store ``ps`` (if given) and fetch ``target`` rendered as PNG through it."""
    if ps is not None:
        store(client, [ps])
        params.update(presentationUID=ps.SOPInstanceUID, presentationSeriesUID=ps.SeriesInstanceUID)
    resp = client.get(wado_url(target, contentType="image/png", **params), status=status)
    return decode(resp.body) if status == 200 else resp


# -- VOI, Modality LUT, Presentation LUT -----------------------------------------------------


def test_presentation_voi_window_replaces_image_window(dicomweb_client, ct):
    got = rendered(dicomweb_client, ct, gsps(ct, SoftcopyVOILUTSequence=[voi(1500, 1000)]))
    assert np.array_equal(got, linear_window(ct.pixel_array, 1500, 1000))


def test_presentation_voi_item_for_this_image_is_chosen(dicomweb_client, ct):
    items = [voi(100, 50, refs=[new_uid()]), voi(1200, 800, refs=[ct.SOPInstanceUID])]
    got = rendered(dicomweb_client, ct, gsps(ct, SoftcopyVOILUTSequence=items))
    assert np.array_equal(got, linear_window(ct.pixel_array, 1200, 800))


def test_presentation_request_window_overrides_presentation_voi(dicomweb_client, ct):
    got = rendered(dicomweb_client, ct, gsps(ct, SoftcopyVOILUTSequence=[voi(1500, 1000)]),
                   windowCenter=3000, windowWidth=2000)
    assert np.array_equal(got, linear_window(ct.pixel_array, 3000, 2000))


def test_presentation_modality_lut_replaces_image_rescale(dicomweb_client):
    target = image(RescaleSlope=1, RescaleIntercept=0)
    store(dicomweb_client, [target])
    ps = gsps(target, RescaleSlope=2, RescaleIntercept=-100, RescaleType="US",
              SoftcopyVOILUTSequence=[voi(3000, 2000)])
    got = rendered(dicomweb_client, target, ps)
    assert np.array_equal(got, linear_window(target.pixel_array * 2.0 - 100, 3000, 2000))


def test_presentation_voi_lut_sequence_is_applied(dicomweb_client, ct):
    lut = Dataset()
    lut.LUTDescriptor = [4096, 0, 12]
    # An inverting ramp over the stored values.
    lut.add_new(0x00283006, "OW", np.arange(4095, -1, -1, dtype="<u2").tobytes())
    item = Dataset()
    item.VOILUTSequence = [lut]
    got = rendered(dicomweb_client, ct, gsps(ct, SoftcopyVOILUTSequence=[item]))
    expected = np.rint((4095 - ct.pixel_array.astype(float)) * 255 / 4095).astype(np.uint8)
    assert np.array_equal(got, expected)


def test_presentation_lut_inverse_inverts(dicomweb_client, ct):
    ps = gsps(ct, PresentationLUTShape="INVERSE", SoftcopyVOILUTSequence=[voi(1500, 1000)])
    got = rendered(dicomweb_client, ct, ps)
    assert np.array_equal(got, 255 - linear_window(ct.pixel_array, 1500, 1000))


def test_presentation_lut_sequence_maps_voi_output(dicomweb_client, ct):
    lut = Dataset()
    lut.LUTDescriptor = [256, 0, 8]
    table = (255 - np.arange(256)) // 2  # inverted and halved
    lut.add_new(0x00283006, "OW", table.astype("<u2").tobytes())
    ps = gsps(ct, SoftcopyVOILUTSequence=[voi(1500, 1000)], PresentationLUTSequence=[lut])
    del ps.PresentationLUTShape
    got = rendered(dicomweb_client, ct, ps)
    assert np.array_equal(got, table[linear_window(ct.pixel_array, 1500, 1000)])


def test_presentation_lut_decides_polarity_of_monochrome1(dicomweb_client):
    target = image(PhotometricInterpretation="MONOCHROME1")
    store(dicomweb_client, [target])
    plain = rendered(dicomweb_client, target, None, windowCenter=1500, windowWidth=1000)
    assert np.array_equal(plain, 255 - linear_window(target.pixel_array, 1500, 1000))
    # PS3.4 N.2.1: with a presentation state, IDENTITY means no inversion.
    got = rendered(dicomweb_client, target, gsps(target, SoftcopyVOILUTSequence=[voi(1500, 1000)]))
    assert np.array_equal(got, linear_window(target.pixel_array, 1500, 1000))


# -- spatial transformation, displayed area, shutters ------------------------------------------------


@pytest.fixture
def base(ct):
    return linear_window(ct.pixel_array, 2000, 3000)  # the image's own window (no VOI in the GSPS)


@pytest.mark.parametrize("rotation,flip", [(90, "N"), (180, "N"), (270, "N"), (0, "Y"), (90, "Y")])
def test_presentation_rotation_then_flip(dicomweb_client, ct, base, rotation, flip):
    got = rendered(dicomweb_client, ct, gsps(ct, ImageRotation=rotation, ImageHorizontalFlip=flip))
    expected = np.rot90(base, k=-(rotation // 90))  # clockwise
    if flip == "Y":
        expected = expected[:, ::-1]  # PS3.3 C.10.6: flip after rotation
    assert np.array_equal(got, expected)


def test_presentation_rectangular_shutter(dicomweb_client, ct, base):
    ps = gsps(ct, ShutterShape="RECTANGULAR", ShutterLeftVerticalEdge=5, ShutterRightVerticalEdge=20,
              ShutterUpperHorizontalEdge=3, ShutterLowerHorizontalEdge=12, ShutterPresentationValue=65535)
    got = rendered(dicomweb_client, ct, ps)
    expected = np.full_like(base, 255)
    expected[2:12, 4:20] = base[2:12, 4:20]  # 1-based inclusive edges
    assert np.array_equal(got, expected)


def test_presentation_circular_shutter_defaults_to_black(dicomweb_client, ct, base):
    ps = gsps(ct, ShutterShape="CIRCULAR", CenterOfCircularShutter=[8, 12], RadiusOfCircularShutter=5)
    got = rendered(dicomweb_client, ct, ps)
    rows, cols = np.mgrid[1:base.shape[0] + 1, 1:base.shape[1] + 1]
    inside = (rows - 8) ** 2 + (cols - 12) ** 2 <= 25  # centre given as row\column
    assert np.array_equal(got[inside], base[inside])
    assert (got[~inside] == 0).all()


def test_presentation_polygonal_shutter(dicomweb_client, ct, base):
    # A right triangle with vertices (row, column) (2,2), (2,20), (14,2).
    ps = gsps(ct, ShutterShape="POLYGONAL", VerticesOfThePolygonalShutter=[2, 2, 2, 20, 14, 2],
              ShutterPresentationValue=0)
    got = rendered(dicomweb_client, ct, ps)
    rows, cols = np.mgrid[1:base.shape[0] + 1, 1:base.shape[1] + 1]
    # Signed distance to the hypotenuse from (2,20) to (14,2): r/12 + c/18 = 1 + 2/12 + 2/18 ... in pixels.
    hyp = (rows - 2) / 12 + (cols - 2) / 18
    well_inside = (rows > 3) & (cols > 3) & (hyp < 0.85)
    well_outside = (rows < 1.5) | (cols < 1.5) | (hyp > 1.15)
    assert np.array_equal(got[well_inside], base[well_inside])
    assert (got[well_outside] == 0).all()


def test_presentation_shutters_combine_to_the_smallest_visible_area(dicomweb_client, ct, base):
    ps = gsps(ct, ShutterShape=["RECTANGULAR", "CIRCULAR"], ShutterLeftVerticalEdge=1,
              ShutterRightVerticalEdge=12, ShutterUpperHorizontalEdge=1, ShutterLowerHorizontalEdge=16,
              CenterOfCircularShutter=[8, 12], RadiusOfCircularShutter=6, ShutterPresentationValue=0)
    got = rendered(dicomweb_client, ct, ps)
    rows, cols = np.mgrid[1:base.shape[0] + 1, 1:base.shape[1] + 1]
    visible = ((rows - 8) ** 2 + (cols - 12) ** 2 <= 36) & (cols <= 12)
    assert np.array_equal(got[visible], base[visible])
    assert (got[~visible] == 0).all()


def area(tlhc: list[int], brhc: list[int], **attributes: object) -> Dataset:
    item = Dataset()
    item.DisplayedAreaTopLeftHandCorner = tlhc
    item.DisplayedAreaBottomRightHandCorner = brhc
    item.PresentationSizeMode = "SCALE TO FIT"
    for key, value in attributes.items():
        setattr(item, key, value)
    return item


def test_presentation_displayed_area_crops(dicomweb_client, ct, base):
    got = rendered(dicomweb_client, ct, gsps(ct, DisplayedAreaSelectionSequence=[area([5, 3], [20, 10])]))
    assert np.array_equal(got, base[2:10, 4:20])  # corners are column\row, 1-based


def test_presentation_displayed_area_beyond_image_is_black(dicomweb_client, ct, base):
    got = rendered(dicomweb_client, ct, gsps(ct, DisplayedAreaSelectionSequence=[area([-1, 0], [26, 17])]))
    expected = np.zeros((18, 28), dtype=np.uint8)
    expected[1:17, 2:26] = base
    assert np.array_equal(got, expected)


def test_presentation_displayed_area_magnify_scales(dicomweb_client, ct):
    item = area([1, 1], [24, 16], PresentationSizeMode="MAGNIFY", PresentationPixelMagnificationRatio=2)
    got = rendered(dicomweb_client, ct, gsps(ct, DisplayedAreaSelectionSequence=[item]))
    assert got.shape == (32, 48)


@pytest.mark.parametrize("item", [area([1, 1], [24, 16], PresentationSizeMode="MAGNIFY",
                                        PresentationPixelMagnificationRatio=5000),
                                   area([-100000, 1], [24, 100000])])
def test_presentation_huge_displayed_area_is_400(dicomweb_client, ct, item):
    resp = rendered(dicomweb_client, ct, gsps(ct, DisplayedAreaSelectionSequence=[item]), status=400)
    assert "displayed area" in resp.text


def test_presentation_displayed_area_then_rotation(dicomweb_client, ct, base):
    ps = gsps(ct, DisplayedAreaSelectionSequence=[area([5, 3], [20, 10])], ImageRotation=90)
    got = rendered(dicomweb_client, ct, ps)
    assert np.array_equal(got, np.rot90(base[2:10, 4:20], k=-1))


def test_presentation_region_and_rows_apply_after_presentation(dicomweb_client, ct, base):
    ps = gsps(ct, ImageRotation=90)
    got = rendered(dicomweb_client, ct, ps, region="0,0,0.5,0.5")
    assert np.array_equal(got, np.rot90(base, k=-1)[:12, :8])
    resp = dicomweb_client.get(wado_url(ct, contentType="image/png", presentationUID=ps.SOPInstanceUID,
                                        presentationSeriesUID=ps.SeriesInstanceUID, rows=48), status=200)
    assert decode(resp.body).shape == (48, 32)


def test_presentation_referenced_frame_only(dicomweb_client):
    target = make_dataset(rows=8, columns=8, frames=3)
    store(dicomweb_client, [target])
    ps = gsps(target, frames=[2], SoftcopyVOILUTSequence=[voi(2048, 4096)])
    got = rendered(dicomweb_client, target, ps, frameNumber=2)
    assert np.array_equal(got, linear_window(target.pixel_array[1], 2048, 4096))
    resp = rendered(dicomweb_client, target, None, status=400, frameNumber=1,
                    presentationUID=ps.SOPInstanceUID, presentationSeriesUID=ps.SeriesInstanceUID)
    assert "does not apply" in resp.text


# -- errors ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("param", ["presentationUID", "presentationSeriesUID"])
def test_presentation_one_uid_alone_is_400(dicomweb_client, ct, param):
    resp = dicomweb_client.get(wado_url(ct, **{param: new_uid()}), status=400)
    assert "together" in resp.text


def test_presentation_malformed_uid_is_400(dicomweb_client, ct):
    resp = dicomweb_client.get(wado_url(ct, presentationUID="x.y", presentationSeriesUID=new_uid()), status=400)
    assert "presentationUID" in resp.text


def test_presentation_unknown_is_404(dicomweb_client, ct):
    dicomweb_client.get(wado_url(ct, presentationUID=new_uid(), presentationSeriesUID=new_uid()), status=404)


def test_presentation_of_another_study_is_404(dicomweb_client, ct):
    other = image()
    store(dicomweb_client, [other])
    ps = gsps(other)
    store(dicomweb_client, [ps])
    dicomweb_client.get(wado_url(ct, presentationUID=ps.SOPInstanceUID,
                                 presentationSeriesUID=ps.SeriesInstanceUID), status=404)


def test_presentation_not_referencing_the_image_is_400(dicomweb_client, ct):
    other = image(study_uid=ct.StudyInstanceUID)
    store(dicomweb_client, [other])
    resp = rendered(dicomweb_client, ct, gsps(other), status=400)
    assert "does not apply" in resp.text


def test_presentation_uid_of_an_image_is_400(dicomweb_client, ct):
    other = image(study_uid=ct.StudyInstanceUID)
    store(dicomweb_client, [other])
    resp = dicomweb_client.get(wado_url(ct, presentationUID=other.SOPInstanceUID,
                                        presentationSeriesUID=other.SeriesInstanceUID), status=400)
    assert "Grayscale Softcopy Presentation State" in resp.text


def test_presentation_technique_annotation_names_the_window_the_state_applied(dicomweb_client, ct):
    # annotate.py: 'technique' writes the window used; through a GSPS that is the state's VOI.
    from PIL import Image

    from dicomweb_wsgi import annotate

    ps = gsps(ct, SoftcopyVOILUTSequence=[voi(1500, 1000)])
    plain = rendered(dicomweb_client, ct, ps)
    annotated = rendered(dicomweb_client, ct, None, annotation="technique", presentationUID=ps.SOPInstanceUID,
                         presentationSeriesUID=ps.SeriesInstanceUID)

    def drawn(window):
        lines = annotate.annotation_lines(ct, ["technique"], 1, window)
        return np.asarray(annotate.annotator(lines)(Image.fromarray(plain.copy(), "L")))

    assert not np.array_equal(drawn((1500.0, 1000.0, "LINEAR")), drawn(None))  # the two texts differ
    assert np.array_equal(annotated, drawn((1500.0, 1000.0, "LINEAR")))
