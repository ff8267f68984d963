"""The DICOM objects a result becomes: a TID 1500 Comprehensive 3D SR and Secondary Capture heatmaps."""
