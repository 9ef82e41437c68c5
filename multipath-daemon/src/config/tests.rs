//! Tests of the TOML config, the filter and check_file.

use super::*;
