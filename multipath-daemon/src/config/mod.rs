//! mpathd's configuration (TOML), multipath.conf import and check-config.
