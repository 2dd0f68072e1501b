//! Text a rank wrote (a panic, an abort's message, its host name, its last
//! words on stderr) made fit for spmdrun's own lines: one line, no control
//! characters, and a bounded length, so that a rank can neither forge a
//! line of spmdrun's nor send commands to the terminal.

/// The most characters of a rank's text one of spmdrun's lines shows.
pub const MAX_SHOWN: usize = 2000;

/// `text` on one line: whitespace runs folded to one space, every other
/// control character (and the characters that reorder text on screen)
/// written as its escape (`\u{1b}`), and no more than [`MAX_SHOWN`]
/// characters, saying how much was left out.
pub fn shown(text: &str) -> String {
    let text = text.trim();
    let (mut out, mut kept, mut space) = (String::new(), 0, false);
    for (at, c) in text.char_indices() {
        if c.is_whitespace() {
            space = true;
            continue;
        }
        if kept >= MAX_SHOWN {
            out.push_str(&format!("... ({} more bytes not shown)", text.len() - at));
            break;
        }
        if std::mem::take(&mut space) {
            out.push(' ');
        }
        if c.is_control() || reorders(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
        kept += 1;
    }
    out
}

/// True for the characters that change the direction of the text around
/// them (a line would read otherwise than its bytes).
fn reorders(c: char) -> bool {
    matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_fold_and_cut() {
        assert_eq!(shown("  a\n\tb  c "), "a b c");
        assert_eq!(
            shown("x\u{1b}[2J\u{7}\rspmdrun: forged"),
            "x\\u{1b}[2J\\u{7} spmdrun: forged"
        );
        assert_eq!(shown("a\u{202e}b\u{85}"), "a\\u{202e}b");
        assert_eq!(shown("ok\u{9b}31m"), "ok\\u{9b}31m");
        let long = "h".repeat(3 * MAX_SHOWN);
        let cut = shown(&long);
        assert!(cut.starts_with(&"h".repeat(MAX_SHOWN)), "{cut}");
        assert!(
            cut.ends_with(&format!("... ({} more bytes not shown)", 2 * MAX_SHOWN)),
            "{cut}"
        );
        assert_eq!(shown("überall 名前"), "überall 名前");
    }
}
