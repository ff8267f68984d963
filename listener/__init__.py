"""The DICOM front door: a pynetdicom SCP that stores every instance durably and completes studies."""
