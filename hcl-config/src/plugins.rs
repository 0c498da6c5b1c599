//! The shape of SPIRE's plugin blocks: `Kind "name" { plugin_data { … } enabled = … }`.
//! A kind is a struct with one optional field per implementation, so an unknown name is
//! refused by name.

use serde::Deserialize;

/// One `Kind "name" { plugin_data { … } }` block.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginBlock<T> {
    #[serde(default)]
    pub plugin_data: T,
    /// SPIRE's switch to keep a block in the file but not run it.
    #[serde(default = "enabled")]
    pub enabled: bool,
}

fn enabled() -> bool {
    true
}

/// A plugin that takes no settings.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NoSettings {}
