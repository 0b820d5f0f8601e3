"""De-identification of DICOM instances (PS3.15 Annex E basic profile) before they leave the site.

Entry points: `deidentify_file`, `deidentify_slide` (edge.deid.stream) with a `Policy` from
`policy()` (edge.deid.policy) and the site secret (edge.secrets.read_secret).
"""

from edge.deid.policy import OPTIONS, DeidError, Policy, policy
from edge.deid.stream import deidentify_file, deidentify_slide

__all__ = ["OPTIONS", "DeidError", "Policy", "deidentify_file", "deidentify_slide", "policy"]
