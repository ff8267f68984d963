"""Deterministic UIDs of result objects, so that a re-run replaces rather than duplicates.

The same study analysed again by the same model version yields the same Series and SOP Instance
UIDs; a PACS receiving them again overwrites (or ignores) its copy instead of showing two results.
A new model version yields new UIDs: its result is a new series beside the old one.

Every UID is ``UID_PREFIX`` followed by the decimal digits of a SHA-512 hash of its inputs
(:func:`pydicom.uid.generate_uid` with ``entropy_srcs``). pydicom hashes the plain concatenation of
the sources, so ("ab", "c") and ("a", "bc") would collide; :func:`result_uid` therefore hands it
one length-prefixed string, which no two different input tuples share.
"""

from __future__ import annotations

from pydicom.uid import PYDICOM_ROOT_UID, generate_uid

UID_PREFIX = PYDICOM_ROOT_UID
"""Root of every result UID: pydicom's root for generated UIDs; a site may set its own org root."""

SR_KIND = "sr"
SC_KIND = "sc"


def _encode(values: tuple[str, ...]) -> str:
    """One unambiguous string for a tuple of strings (each value length-prefixed)."""
    return "".join(f"{len(value)}:{value};" for value in values)


def result_uid(study_uid: str, model_name: str, model_version: str, *parts: str) -> str:
    """A UID fixed by the study, the model and ``parts``, so a re-run reproduces it.

    Parameters
    ----------
    study_uid
        Study Instance UID of the analysed study; results of different studies never share UIDs.
    model_name, model_version
        The algorithm; a new version gives new UIDs (a new series next to the old result).
    *parts
        What the UID names within that result, e.g. ``("sr", "series")``.

    Returns
    -------
    str
        A valid UID of at most 64 characters under :data:`UID_PREFIX`.

    Raises
    ------
    ValueError
        If the study UID, model name or model version is empty: a UID derived from nothing would be
        shared by unrelated results.
    """
    for label, value in (("study_uid", study_uid), ("model_name", model_name), ("model_version", model_version)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{label} must be a non-empty string, got {value!r}")
    entropy = _encode((str(study_uid).strip(), model_name, model_version, *(str(part) for part in parts)))
    return str(generate_uid(prefix=UID_PREFIX, entropy_srcs=[entropy]))


def sr_series_uid(study_uid: str, model_name: str, model_version: str) -> str:
    """Series Instance UID of the SR series of one study's result for one model version."""
    return result_uid(study_uid, model_name, model_version, SR_KIND, "series")


def sr_instance_uid(study_uid: str, model_name: str, model_version: str) -> str:
    """SOP Instance UID of the (single) SR of one study's result for one model version."""
    return result_uid(study_uid, model_name, model_version, SR_KIND, "instance")


def sc_series_uid(study_uid: str, model_name: str, model_version: str) -> str:
    """Series Instance UID of the Secondary Capture (heatmap) series of one study's result."""
    return result_uid(study_uid, model_name, model_version, SC_KIND, "series")


def sc_instance_uid(study_uid: str, model_name: str, model_version: str, index: int) -> str:
    """SOP Instance UID of the Secondary Capture of key image ``index`` (0-based rank)."""
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"index must be a non-negative integer, got {index!r}")
    return result_uid(study_uid, model_name, model_version, SC_KIND, "instance", str(index))


def tracking_uid(study_uid: str, model_name: str, model_version: str) -> str:
    """Tracking Unique Identifier of the COVID-19 finding in the SR (stable across re-runs)."""
    return result_uid(study_uid, model_name, model_version, SR_KIND, "tracking")


def device_uid(model_name: str, model_version: str, manufacturer: str) -> str:
    """Device Observer UID of the algorithm: one per model version and node, whatever the study.

    The observer is the same device in every report it writes, so its UID must not depend on the
    study (a per-study device UID would make every report look like a different machine).
    """
    for label, value in (("model_name", model_name), ("model_version", model_version), ("manufacturer", manufacturer)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{label} must be a non-empty string, got {value!r}")
    return str(generate_uid(prefix=UID_PREFIX, entropy_srcs=[_encode(("device", manufacturer, model_name,
                                                                       model_version))]))
