"""The lab profile: the lab server's real Postfix and Dovecot files, parsed,
validated and explained (``gponsim config init`` / ``gponsim config explain``)."""

from .explain import Row, explain_rows, render_explain
from .postfix import ConfigError
from .profile import LabProfile, Unsimulated, init_config, load_profile

__all__ = [
    "ConfigError",
    "LabProfile",
    "Row",
    "Unsimulated",
    "explain_rows",
    "init_config",
    "load_profile",
    "render_explain",
]
