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
    let path = path(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    fenced_blocks(&text, lang)
}

fn fenced_blocks(markdown: &str, lang: &str) -> Vec<String> {
    enum State {
        Outside,
        Keeping(String),
        Skipping,
    }
    let mut blocks = Vec::new();
    let mut state = State::Outside;
    for line in markdown.lines() {
        let fence = line.trim_start().strip_prefix("```");
        state = match (state, fence) {
            (State::Outside, Some(info)) if info.trim() == lang => State::Keeping(String::new()),
            (State::Outside, Some(_)) => State::Skipping,
            (State::Keeping(block), Some(_)) => {
                blocks.push(block);
                State::Outside
            }
            (State::Skipping, Some(_)) => State::Outside,
            (State::Keeping(mut block), None) => {
                block.push_str(line);
                block.push('\n');
                State::Keeping(block)
            }
            (state, None) => state,
        };
    }
    blocks
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_the_asked_language_and_whole_blocks() {
        let text = "intro\n```hcl\na = 1\n```\n```sh\necho hi\n```\n  ```hcl\nb {\n}\n  ```\n```hcl\nunclosed\n";
        assert_eq!(super::fenced_blocks(text, "hcl"), ["a = 1\n", "b {\n}\n"]);
        assert_eq!(super::fenced_blocks(text, "sh"), ["echo hi\n"]);
    }
}
