"""Where slides come from: scanner output folders (and, later, a DICOM receiver)."""
