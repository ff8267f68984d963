"""The models of the triage node: preprocessing, networks, training, evaluation and inference.

The engine knows nothing of DICOM networking or of the database. Workers call
:func:`engine.predictor.load_predictor` for scores, :func:`engine.imageio.dataset_to_gray` to
decode a received DICOM data set, and :mod:`engine.explain` for heatmaps and overlays.
Heavy imports (torch) live in the submodules that need them, so importing ``engine`` is cheap.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
