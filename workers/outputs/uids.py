"""Deterministic UIDs of result objects, so that a re-run replaces rather than duplicates.

The same study analysed again by the same model version yields the same Series and SOP Instance
UIDs; a PACS receiving them again overwrites (or ignores) its copy instead of showing two results.
A new model version yields new UIDs: its result is a new series beside the old one.
"""

from __future__ import annotations

from pydicom.uid import PYDICOM_ROOT_UID, generate_uid

UID_PREFIX = PYDICOM_ROOT_UID  # pydicom's root for generated UIDs; a site may set its own org root here


def result_uid(study_uid: str, model_name: str, model_version: str, *parts: str) -> str:
    """A UID derived from the study, the model and ``parts`` (e.g. "sr", "series")."""
    return str(generate_uid(prefix=UID_PREFIX, entropy_srcs=[study_uid, model_name, model_version, *parts]))


def sr_series_uid(study_uid: str, model_name: str, model_version: str) -> str:
    return result_uid(study_uid, model_name, model_version, "sr", "series")


def sr_instance_uid(study_uid: str, model_name: str, model_version: str) -> str:
    return result_uid(study_uid, model_name, model_version, "sr", "instance")


def sc_series_uid(study_uid: str, model_name: str, model_version: str) -> str:
    return result_uid(study_uid, model_name, model_version, "sc", "series")


def sc_instance_uid(study_uid: str, model_name: str, model_version: str, index: int) -> str:
    return result_uid(study_uid, model_name, model_version, "sc", "instance", str(index))
