//! Finds the line of a key in the HCL source, so errors found after parsing (by serde or
//! by validation) can point at it.

use hcl_edit::structure::{Block, Body};
use hcl_edit::Span;

/// The 1-based line where the deepest existing part of `path` is written.
///
/// Path segments are attribute keys, block identifiers and block labels in order, as serde
/// sees them: `plugins.KeyManager.disk.plugin_data.keys_path`.
pub fn line_of(source: &str, body: &Body, path: &[String]) -> Option<usize> {
    let offset = offset_of(body, path)?;
    Some(source.get(..offset).map_or(1, |before| before.matches('\n').count() + 1))
}

fn offset_of(body: &Body, path: &[String]) -> Option<usize> {
    let (first, rest) = path.split_first()?;
    if let Some(attribute) = body.get_attribute(first) {
        return attribute.span().map(|s| s.start);
    }
    let blocks: Vec<&Block> = body.get_blocks(first).collect();
    // Pick the block whose labels match the following segments, if any do.
    let (block, consumed) = blocks
        .iter()
        .find_map(|block| {
            let n = block.labels.len();
            let labels_match = n <= rest.len() && block.labels.iter().zip(rest).all(|(l, s)| l.as_str() == s);
            labels_match.then_some((*block, n))
        })
        .or_else(|| blocks.first().map(|b| (*b, 0)))?;
    let here = block.span().map(|s| s.start);
    let remaining = rest.get(consumed..).unwrap_or_default();
    if remaining.is_empty() {
        return here;
    }
    offset_of(&block.body, remaining).or(here)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCE: &str = r#"server {
  trust_domain = "example.org"
}

plugins {
  KeyManager "disk" {
    plugin_data {
      keys_path = "/tmp/keys.json"
    }
  }
}
"#;

    fn line(path: &str) -> Option<usize> {
        let body = hcl_edit::parser::parse_body(SOURCE).unwrap();
        let path: Vec<String> = path.split('.').map(String::from).collect();
        line_of(SOURCE, &body, &path)
    }

    #[test]
    fn finds_attributes_blocks_and_labels() {
        assert_eq!(line("server"), Some(1));
        assert_eq!(line("server.trust_domain"), Some(2));
        assert_eq!(line("plugins.KeyManager.disk"), Some(6));
        assert_eq!(line("plugins.KeyManager.disk.plugin_data.keys_path"), Some(8));
    }

    #[test]
    fn falls_back_to_the_deepest_existing_part() {
        assert_eq!(line("server.data_dir"), Some(1));
        assert_eq!(line("plugins.KeyManager.memory"), Some(6));
        assert_eq!(line("nowhere"), None);
    }
}
