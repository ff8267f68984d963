"""Series selection on studies built from the real NY-SBU slices and the real CR."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from ops.bench.series import build_ct_series, copy_with_new_identity, new_uid
from workers.aggregate import decide, key_indices, study_score
from workers.selection import NothingToAnalyse, read_candidates, select_series


def _candidates(paths: list[Path]):  # type: ignore[no-untyped-def]
    rows = []
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        rows.append((path, ds.SOPInstanceUID, ds.SOPClassUID, ds.SeriesInstanceUID))
    return read_candidates(rows)


def test_axial_original_series_with_most_slices_wins_over_reformats(
    tmp_path: Path, ct_files: list[Path], axial_ct_files: list[Path],
) -> None:
    study = new_uid()
    originals = [p for p in axial_ct_files if "ORIGINAL" in pydicom.dcmread(p, stop_before_pixels=True).ImageType]
    main = build_ct_series(originals, tmp_path / "main", 24, study_uid=study, series_number=2)
    thin = build_ct_series(originals, tmp_path / "thin", 8, study_uid=study, series_number=3)
    reformat_series = new_uid()
    reformats = [copy_with_new_identity(p, tmp_path / "mpr" / f"{i}.dcm", study_uid=study,
                                        series_uid=reformat_series, series_number=4)
                 for i, p in enumerate(p for p in ct_files if p.parent.name in ("coronal", "sagittal"))]
    selection = select_series(_candidates([*main, *thin, *reformats]))
    assert selection.kind == "ct"
    assert selection.series_uid == pydicom.dcmread(main[0], stop_before_pixels=True).SeriesInstanceUID
    assert len(selection.instances) == 24
    positions = [float(c.dataset.ImagePositionPatient[2]) for c in selection.instances]
    assert positions == sorted(positions, reverse=True)
    assert "more slices" in selection.skipped[pydicom.dcmread(thin[0], stop_before_pixels=True).SeriesInstanceUID]
    assert "derived or secondary" in selection.skipped[reformat_series]


def test_frontal_radiograph_is_chosen_and_a_lateral_is_not(tmp_path: Path, cr_file: Path) -> None:
    study = new_uid()
    frontal = copy_with_new_identity(cr_file, tmp_path / "pa.dcm", study_uid=study)
    lateral_path = copy_with_new_identity(cr_file, tmp_path / "lat.dcm", study_uid=study)
    lateral = pydicom.dcmread(lateral_path)
    lateral.ViewPosition = "LL"
    lateral.save_as(lateral_path)
    selection = select_series(_candidates([frontal, lateral_path]))
    assert selection.kind == "cxr"
    assert [c.path for c in selection.instances] == [frontal]

    with pytest.raises(NothingToAnalyse, match="lateral view"):
        select_series(_candidates([lateral_path]))


def test_study_without_images_is_not_applicable_with_reasons(tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    sr = get_testdata_file("test-SR.dcm", download=False)
    if sr is None:
        pytest.skip("pydicom's test SR is not installed")
    with pytest.raises(NothingToAnalyse, match="not an image series"):
        select_series(_candidates([Path(str(sr))]))
    with pytest.raises(NothingToAnalyse, match="no images"):
        select_series([])


def test_aggregation_rule() -> None:
    scores = [0.1] * 90 + [0.9] * 10  # focal disease on 10 % of slices
    assert study_score(scores, "ct") == pytest.approx(0.9)
    assert study_score([0.2, 0.4], "ct") == pytest.approx(0.4)  # top 10 %, at least one slice
    assert study_score([0.2, 0.7, 0.4], "cxr") == pytest.approx(0.7)
    assert key_indices([0.1, 0.9, 0.5, 0.8], 2) == [1, 3]
    assert decide(0.5, 0.5) == "covid-suspected" and decide(0.49, 0.5) == "covid-not-suspected"
    with pytest.raises(ValueError):
        study_score([], "ct")
