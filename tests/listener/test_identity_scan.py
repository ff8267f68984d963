"""The one-pass identity scan agrees with pydicom: the same values where it answers, and it never
answers for a data set pydicom refuses (it hands those on, and pydicom's refusal stands)."""

from __future__ import annotations

import logging
import random
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import (UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian,
                         ImplicitVRLittleEndian)

from listener.identity_scan import scan_identity
from listener.server import CorruptDataset, instance_meta, pydicom_identity, read_instance_meta
from ops.bench.fuzz import Seed, mutate, default_seeds
from tests.badinput.corpus import build_corpus, encode_data_set


def _pydicom_outcome(dataset: bytes, syntax: UID) -> Any:
    """What the listener concluded before the scan existed: an InstanceMeta or the exception's type."""
    try:
        return instance_meta(pydicom_identity(dataset, syntax), str(syntax))
    except Exception as exc:  # noqa: BLE001 - the type is the outcome
        return type(exc)


def _scan_outcome(dataset: bytes | memoryview, syntax: UID) -> Any:
    values = scan_identity(dataset, syntax.is_implicit_VR, syntax.is_little_endian)
    if values is None:
        return None
    try:
        return instance_meta(values, str(syntax))
    except Exception as exc:  # noqa: BLE001
        return type(exc)


def _encoded(path: Path, syntax: UID) -> bytes:
    return encode_data_set(pydicom.dcmread(path), syntax)


@pytest.fixture
def quiet_pydicom() -> Iterator[None]:
    """Hostile inputs make pydicom chatty: its log and warnings say nothing these tests look at."""
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    logger.setLevel(level)


def test_real_files_are_scanned_to_pydicom_values(shared_data: Path) -> None:
    files = sorted((shared_data / "dicom").rglob("*.dcm"))
    assert len(files) > 10
    for path in files:
        seed = Seed.read(path)
        syntax = UID(seed.transfer_syntax)
        scanned = _scan_outcome(seed.dataset, syntax)
        assert scanned is not None, f"{path.name}: a real file left to pydicom"
        assert scanned == _pydicom_outcome(seed.dataset, syntax), path.name
        # the listener scans the received buffer itself, not a copy of it
        assert _scan_outcome(memoryview(seed.dataset), syntax) == scanned, path.name


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRBigEndian])
def test_other_encodings_of_real_files_agree(axial_ct_files: list[Path], shared_data: Path, syntax: UID) -> None:
    for path in [*axial_ct_files[:3], shared_data / "dicom" / "cr-chest" / "RG1_UNCR.dcm"]:
        dataset = _encoded(path, syntax)
        scanned = _scan_outcome(dataset, syntax)
        assert scanned is not None, path.name
        assert scanned == _pydicom_outcome(dataset, syntax), path.name


def test_deflated_data_set_is_inflated_then_scanned(axial_ct_files: list[Path]) -> None:
    plain = _encoded(axial_ct_files[0], ExplicitVRLittleEndian)
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = packer.compress(plain) + packer.flush()
    expected = replace(_pydicom_outcome(plain, ExplicitVRLittleEndian),
                       transfer_syntax_uid=DeflatedExplicitVRLittleEndian)
    assert read_instance_meta(deflated, DeflatedExplicitVRLittleEndian) == expected
    with pytest.raises(CorruptDataset):
        read_instance_meta(deflated[: len(deflated) // 2], DeflatedExplicitVRLittleEndian)


def test_hostile_corpus_scan_never_accepts_what_pydicom_refuses(
        axial_ct_files: list[Path], quiet_pydicom: None) -> None:
    answered = 0
    for case in build_corpus(axial_ct_files[0]):
        syntax = UID(case.transfer_syntax)
        scanned = _scan_outcome(case.body, syntax)
        if scanned is not None:
            answered += 1
            assert scanned == _pydicom_outcome(case.body, syntax), case.name
    assert answered > 0


def test_fuzzed_inputs_scan_agrees_or_hands_on(shared_data: Path, tmp_path: Path, quiet_pydicom: None) -> None:
    seeds = [Seed.read(p) for p in default_seeds(shared_data, tmp_path)]
    for seed in seeds:  # among them an RLE copy: encapsulated fragments
        assert _scan_outcome(seed.dataset, UID(seed.transfer_syntax)) is not None, seed.transfer_syntax
    rng = random.Random(20261125)
    answered = handed_on = 0
    for _ in range(1500):
        seed = rng.choice(seeds)
        data, how = mutate(seed.dataset, rng)
        syntax = UID(seed.transfer_syntax)
        scanned = _scan_outcome(data, syntax)
        if scanned is None:
            handed_on += 1
            continue
        answered += 1
        assert scanned == _pydicom_outcome(data, syntax), how
    # both paths were exercised: mutations the scan reads (values, bits inside pixels) and ones it hands on
    assert answered > 100 and handed_on > 100, (answered, handed_on)
