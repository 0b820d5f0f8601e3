"""DICOM output: UIDs, WSI metadata, the streaming frame writer and pyramid building."""
