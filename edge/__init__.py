"""Scanner-side edge appliance for digital pathology."""

__version__ = "0.1.0"
