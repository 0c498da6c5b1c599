//! The code blocks of the project's docs, so a test can check that what a guide tells an
//! operator to write still works.

use std::path::{Path, PathBuf};

/// A path under the workspace's `docs/` directory.
fn path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs").join(name)
}

/// The fenced code blocks of `docs/<name>` whose info string is `lang` (e.g. `hcl`), in order,
/// each without its fences.
pub fn code_blocks(name: &str, lang: &str) -> Vec<String> {
    blocks(name).into_iter().filter(|b| b.info == lang).map(|b| b.body).collect()
}

/// One fenced code block of a document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    /// The title of the `##` (or deeper) heading the block stands under; empty before the first.
    pub section: String,
    /// The whole info string after the opening fence (`sh on=r1`), trimmed.
    pub info: String,
    /// The lines between the fences.
    pub body: String,
}

impl Block {
    /// The info string's first word: the language.
    pub fn lang(&self) -> &str {
        self.info.split_whitespace().next().unwrap_or("")
    }

    /// The value of `key=value` in the info string, if given.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.info.split_whitespace().skip(1).find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
    }
}

/// Every fenced code block of `docs/<name>`, in order.
pub fn blocks(name: &str) -> Vec<Block> {
    let path = path(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    fenced_blocks(&text)
}

fn fenced_blocks(markdown: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut section = String::new();
    let mut open: Option<Block> = None;
    for line in markdown.lines() {
        let fence = line.trim_start().strip_prefix("```");
        match (open.take(), fence) {
            (None, Some(info)) => {
                open = Some(Block { section: section.clone(), info: info.trim().to_owned(), body: String::new() })
            }
            (Some(block), Some(_)) => blocks.push(block),
            (Some(mut block), None) => {
                block.body.push_str(line);
                block.body.push('\n');
                open = Some(block);
            }
            (None, None) => {
                if let Some(title) = line.strip_prefix("##") {
                    section = title.trim_start_matches('#').trim().to_owned();
                }
            }
        }
    }
    blocks
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_the_asked_language_and_whole_blocks() {
        let text = "intro\n```hcl\na = 1\n```\n```sh\necho hi\n```\n  ```hcl\nb {\n}\n  ```\n```hcl\nunclosed\n";
        let bodies = |lang: &str| -> Vec<String> {
            super::fenced_blocks(text).into_iter().filter(|b| b.lang() == lang).map(|b| b.body).collect()
        };
        assert_eq!(bodies("hcl"), ["a = 1\n", "b {\n}\n"]);
        assert_eq!(bodies("sh"), ["echo hi\n"]);
    }

    #[test]
    fn blocks_carry_their_section_and_attributes() {
        let text = "# Title\n```sh\nfirst\n```\n## Recover\n```sh on=r1\nsecond\n```\n### Then\n```text\n## not a heading\n```\n";
        let blocks = super::fenced_blocks(text);
        assert_eq!(blocks.len(), 3);
        assert_eq!((blocks[0].section.as_str(), blocks[0].attribute("on")), ("", None));
        assert_eq!((blocks[1].section.as_str(), blocks[1].attribute("on")), ("Recover", Some("r1")));
        assert_eq!((blocks[2].section.as_str(), blocks[2].lang()), ("Then", "text"));
        assert_eq!(blocks[2].body, "## not a heading\n");
    }
}
