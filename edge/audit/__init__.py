"""The audit trail: who did what, when, to which slide; exported as DICOM audit messages."""
