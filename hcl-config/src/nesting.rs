//! A bound on how deeply a config nests, checked before the HCL parser runs. hcl-edit
//! backtracks over nested expressions (object keys may be any expression), so its time grows
//! exponentially with depth: a few hundred bytes nested 18 deep took 24 seconds in the
//! fuzzer, and each level multiplies that. SPIRE-shaped configs nest 4 or 5 deep.

/// Deepest nesting accepted: blocks, objects, lists, parentheses and template
/// interpolations, counted together.
pub const MAX_NESTING: usize = 10;

/// Where a config first nests deeper than [`MAX_NESTING`]: (line, column), both from 1.
pub fn too_deep(source: &str) -> Option<(usize, usize)> {
    #[derive(PartialEq)]
    enum Frame {
        Bracket,
        /// `${ … }` or `%{ … }` inside a quoted string.
        Template,
        Quoted,
    }
    let mut stack: Vec<Frame> = Vec::new();
    let depth = |stack: &[Frame]| stack.iter().filter(|f| **f != Frame::Quoted).count();
    let (mut line, mut column) = (1, 0);
    let mut chars = source.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\n' {
            (line, column) = (line + 1, 0);
        } else {
            column += 1;
        }
        if stack.last() == Some(&Frame::Quoted) {
            match c {
                '\\' => {
                    chars.next();
                    column += 1;
                }
                '"' => {
                    stack.pop();
                }
                '$' | '%' if chars.peek() == Some(&'{') => {
                    chars.next();
                    column += 1;
                    stack.push(Frame::Template);
                }
                _ => {}
            }
        } else {
            match c {
                '"' => stack.push(Frame::Quoted),
                '#' => skip_line(&mut chars, &mut line, &mut column),
                '/' if chars.peek() == Some(&'/') => skip_line(&mut chars, &mut line, &mut column),
                '/' if chars.peek() == Some(&'*') => {
                    chars.next();
                    let mut last = ' ';
                    for c in chars.by_ref() {
                        if c == '\n' {
                            (line, column) = (line + 1, 0);
                        } else {
                            column += 1;
                        }
                        if last == '*' && c == '/' {
                            break;
                        }
                        last = c;
                    }
                }
                '{' | '[' | '(' => stack.push(Frame::Bracket),
                '}' | ']' | ')' => {
                    stack.pop();
                }
                _ => {}
            }
        }
        if depth(&stack) > MAX_NESTING {
            return Some((line, column));
        }
    }
    None
}

fn skip_line(chars: &mut std::iter::Peekable<std::str::Chars<'_>>, line: &mut usize, column: &mut usize) {
    for c in chars.by_ref() {
        if c == '\n' {
            (*line, *column) = (*line + 1, 0);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_brackets_and_templates_but_not_strings_or_comments() {
        let nested = |n: usize| format!("a = {}1{}", "[".repeat(n), "]".repeat(n));
        assert_eq!(too_deep(&nested(MAX_NESTING)), None);
        assert_eq!(too_deep(&nested(MAX_NESTING + 1)), Some((1, 5 + MAX_NESTING)));
        let quiet =
            format!("# {open}\n// {open}\n/* {open}\n */ a = \"{open} \\\" {open}\"\nb = 1", open = "{".repeat(40));
        assert_eq!(too_deep(&quiet), None);
        let templates = format!("a = \"{}\"", "${\"".repeat(MAX_NESTING + 1));
        assert!(too_deep(&templates).is_some(), "interpolations nest too");
        let on_line_three = format!("x {{\n}}\n{}", "(".repeat(MAX_NESTING + 1));
        assert_eq!(too_deep(&on_line_three), Some((3, MAX_NESTING + 1)));
    }
}
