"""gponsim: a narrated, faithful copy of the GPON lab's mail service."""

__version__ = "0.1.0"
