"""C-STORE response statuses the listener answers, as named constants (PS3.4 B.2.3)."""

SUCCESS = 0x0000
# Refused: out of resources. Transient (disk full, database down): the sender should retry later.
OUT_OF_RESOURCES = 0xA700
# Error: data set does not match SOP class (the dataset's SOP Class/Instance UID differ from the request).
DATASET_MISMATCH = 0xA900
# Error: cannot understand (0xCxxx). The instance will not be stored as sent; retrying will not help.
CANNOT_UNDERSTAND = 0xC000
INVALID_UID = 0xC001
MISSING_ATTRIBUTE = 0xC002

DESCRIPTIONS = {
    SUCCESS: "success",
    OUT_OF_RESOURCES: "refused: out of resources",
    DATASET_MISMATCH: "error: data set does not match the request",
    CANNOT_UNDERSTAND: "error: cannot understand the data set",
    INVALID_UID: "error: invalid UID",
    MISSING_ATTRIBUTE: "error: a required attribute is missing",
}
