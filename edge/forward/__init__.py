"""Forwarding to destinations (PACS over C-STORE, DICOMweb STOW-RS, folders)."""
