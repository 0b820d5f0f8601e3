"""Scanner-side edge appliance for digital pathology."""

import logging

__version__ = "0.1.0"

# pynetdicom logs whole C-FIND identifiers and C-STORE datasets (patient names and IDs) at
# INFO and DEBUG: patient data must never reach a log, whatever level a user asks for.
logging.getLogger("pynetdicom").setLevel(logging.WARNING)
