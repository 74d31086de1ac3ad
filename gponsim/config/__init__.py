"""The lab profile: the lab server's real Postfix and Dovecot files, parsed,
validated and explained (``gponsim config init`` / ``gponsim config explain``)."""

from .explain import Row, explain_rows, parameter_rows, render_explain
from .postfix import ConfigError
from .profile import LMTP_SWITCH, LabProfile, Unsimulated, apply_switch, init_config, load_profile

__all__ = [
    "ConfigError",
    "LMTP_SWITCH",
    "LabProfile",
    "Row",
    "Unsimulated",
    "apply_switch",
    "explain_rows",
    "parameter_rows",
    "init_config",
    "load_profile",
    "render_explain",
]
